"""StagFormer stacks on several devices: stack s on devices[s], one stream a stage.

The staggered model's point (arXiv 2501.15665, issue 8): at decode step i stack s
needs stack s-1's output of step i-1 only, so the stacks of one step can run on
separate GPUs at the same time, and only a memory row of B x C float32 values
crosses between them once a step. This module is that code path, built from the
single-GPU kernels and launch sequence of gpu/stagformer.py:

  plan(p, devices)       the placement, pure Python: stage s runs stack s on
                         devices[s] and receives stack s-1's output of the previous
                         step (ValueError on a bad device list, before anything runs)
  place(m, devices)      a p = 2 gs.Model split into its stages (weights copied to a
                         stage's device only where it differs; shared weights are
                         one copy a device)
  from_reference(...)    the same from reference.stagformer weights
  MultiStag.step(e, pos) one decode step: stage 0 on its stream runs stack 1's layers
                         and then copies h_pos (B x C float32, cudaMemcpyPeerAsync)
                         into stage 1's receive buffer for the NEXT step, recording
                         an event; stage 1 on its stream waits for the event of the
                         previous step's copy, projects h_{pos-1} into its cross
                         caches, and runs stack 2's layers. Both run concurrently.
  MultiStag.grow(pos)    every stage's buffers re-made for the next position (the
                         single-GPU kernels read whole caches of length pos + 1)

Each stack runs exactly the launches of ``gs.decode_step``'s sequential schedules
(``gs.run_layers``, sel = [s], ``gs.project_memory`` before stack 2), with the same
shapes, splits and versions, so the result equals the single-GPU step bit for bit
(tests/test_stagformer_multi.py checks outputs and caches after every step, on one
GPU with devices = [0, 0] and on two where there are two).

Streams and ordering. A step forks from ``origin`` (default: the current stream of
stage 0's device): every stage stream waits for an event recorded there, and at the
end ``origin`` waits for every stage's last event. So the caller sees a step as one
ordered operation on ``origin`` (a next token needs the last stack's output: steps
are serial in autoregressive decoding; the stacks within a step are not). The
receive buffer is double-buffered by a step counter: step t writes recv[t % 2] and
stack 2 reads recv[(t - 1) % 2]; the copy into recv[k] waits until stack 2 has
finished reading recv[k] (event ``consumed[k]``), and stack 2 waits for the copy
into the buffer it reads (event ``sent[k]``). Those waits are redundant with the
fork/join but make the stages correct without it; ``reset_events`` drops them after
a full synchronize (CUDA-graph capture must not wait on events recorded outside it).

p > 2: ``plan`` and the stage loop (receive, project, layers, send) are written for
p stages, but only p = 2 is implemented: gs.Model and gs.run_layers hold exactly one
cross-attending stack (stack 2: ``Model.cross``, ``Model.wckv``, Buffers.xk/xv), so
a stage for stack s >= 3 has no GPU model to run. ``place``/``from_reference``
raise NotImplementedError for p != 2 after validating the device list.

Memory: stage 1 uses gs.new_buffers(..., stacks=2) (the layout gs.run_layers indexes
as stack 2), whose stack-1 slot of the self caches and activations is unused: one
stack's self caches of waste on stage 1's device. Stage 0 uses stacks=1 buffers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from gpu import runtime as rt
from gpu import stagformer as gs


@dataclass(frozen=True)
class StagePlan:
    """Stage ``stack`` (0-based) on ``device``; ``source``: the stage whose output of
    the previous step it receives (None for stage 0); ``sink``: the stage it sends
    its output to (None for the last); ``peer``: source on another device."""

    stack: int
    device: int
    source: int | None
    sink: int | None
    peer: bool


def plan(p: int, devices, n_devices: int | None = None) -> tuple[StagePlan, ...]:
    """The placement of p stacks on ``devices`` (one id a stack; ids may repeat:
    [0, 0] runs both stages on GPU 0, on separate streams). ValueError on a list of
    the wrong length, ids that are not ints, negative, or >= n_devices (if given)."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"p must be an int >= 1, got {p!r}")
    try:
        devs = list(devices)
    except TypeError:
        raise ValueError(
            f"devices must be a list of {p} ids, got {devices!r}"
        ) from None
    if len(devs) != p:
        raise ValueError(f"devices must hold one id a stack: {p}, got {len(devs)}")
    for d in devs:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise ValueError(f"device ids must be ints, got {d!r} in {devs}")
        if d < 0:
            raise ValueError(f"device ids must be >= 0, got {d} in {devs}")
        if n_devices is not None and d >= n_devices:
            raise ValueError(f"device {d} does not exist: {n_devices} device(s) here")
    return tuple(
        StagePlan(
            stack=s,
            device=int(devs[s]),
            source=s - 1 if s else None,
            sink=s + 1 if s < p - 1 else None,
            peer=bool(s) and devs[s] != devs[s - 1],
        )
        for s in range(p)
    )


def _check_p(p: int) -> None:
    if p != 2:
        raise NotImplementedError(
            f"p = {p}: only p = 2 runs on GPUs. gpu/stagformer.py's Model and "
            "run_layers holds one cross-attending stack (stack 2); a stage for stack "
            ">= 3 needs its own cross weights and caches there. plan() already "
            "places p stages."
        )


def _device_count() -> int:
    import cupy as cp

    return int(cp.cuda.runtime.getDeviceCount())


def _on(a, d: int):
    """a (a CuPy array, or None) on device d: itself if it is there, else a copy."""
    import cupy as cp

    if a is None or a.device.id == d:
        return a
    with cp.cuda.Device(d):
        return cp.asarray(cp.asnumpy(a))  # placement, not timed: through the host


def _layers_on(layers, d: int, memo: dict):
    """A stack's Layer list on device d; memo keeps one copy a (list, device)."""
    key = (id(layers), d)
    if key not in memo:
        memo[key] = [
            gs.Layer(*(_on(getattr(ly, f.name), d) for f in dataclasses.fields(ly)))
            for ly in layers
        ]
    return memo[key]


def enable_peer_access(devices) -> None:
    """Let each pair of distinct devices in the chain read each other (where the
    hardware allows); an already enabled pair is fine. Copies work without it
    (staged), only slower."""
    import cupy as cp

    rtm = cp.cuda.runtime
    for a, b in zip(devices, devices[1:], strict=False):
        for x, y in ((a, b), (b, a)):
            if x == y or not rtm.deviceCanAccessPeer(x, y):
                continue
            with cp.cuda.Device(x):
                try:
                    rtm.deviceEnablePeerAccess(y)
                except rtm.CUDARuntimeError as e:
                    if "AlreadyEnabled" not in str(e):
                        raise


@dataclass
class Stage:
    """One stack on one device: its part of the model, its stream, its buffers.

    recv[k] (B, C) float32: memory rows from the previous stage (double-buffered);
    e: this stage's copy of the step's embeddings; sent[k] (recorded on this stage's
    stream after copying into the next stage's recv[k]); consumed[k] (recorded after
    this stage has read recv[k]); done: its last work of a step."""

    plan: StagePlan
    model: gs.Model
    stream: object
    bufs: gs.Buffers | None = None
    e: object = None
    recv: list = field(default_factory=list)
    sent: list = field(default_factory=list)
    consumed: list = field(default_factory=list)
    done: object = None
    flags: dict = field(default_factory=dict)  # which events hold a record to wait on

    @property
    def device(self) -> int:
        return self.plan.device

    @property
    def stacks(self) -> int:
        """The gs.new_buffers layout: 1 (stack 1 alone) or 2 (stack 2 at slot 1)."""
        return 1 if self.plan.stack == 0 else 2


def place(m: gs.Model, devices, b: int, pos: int = 0) -> MultiStag:
    """Split the p = 2 model m (built on any one device by gs.to_gpu) into stages on
    ``devices``, with buffers for batch b at position pos. Validates everything
    before it allocates or launches."""
    stages = plan(len(m.stacks), devices)
    _check_p(len(stages))
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"b must be an int >= 1, got {b!r}")
    if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
        raise ValueError(f"pos must be an int >= 0, got {pos!r}")
    stages = plan(len(m.stacks), devices, _device_count())
    import cupy as cp

    enable_peer_access([st.device for st in stages])
    memo: dict = {}
    out = []
    for sp in stages:
        d, s = sp.device, sp.stack
        stacks = [None, None]
        stacks[s] = _layers_on(m.stacks[s], d, memo)
        gf = [None, None]
        gf[s] = _on(m.gf[s], d)
        cross = [tuple(_on(a, d) for a in c) for c in m.cross] if s else []
        part = gs.Model(
            m.H, m.G, m.D, m.C, m.F, m.L, m.shared, m.window, m.dtype,
            stacks, cross, _on(m.wckv, d) if s else None, gf,
        )  # fmt: skip
        with cp.cuda.Device(d):
            out.append(Stage(sp, part, cp.cuda.Stream(non_blocking=True)))
    return MultiStag(out, b, pos)


def from_reference(w, cfg, dtype, devices, b: int, pos: int = 0) -> MultiStag:
    """reference.stagformer weights placed on ``devices`` (converted with gs.to_gpu
    on the first device, then split). p != 2: NotImplementedError (see the module
    docstring), after the device list is validated."""
    plan(cfg.p, devices)
    _check_p(cfg.p)
    import cupy as cp

    plan(cfg.p, devices, _device_count())
    with cp.cuda.Device(int(list(devices)[0])):
        m = gs.to_gpu(w, cfg, dtype)
    return place(m, devices, b, pos)


def copy_async(dst, src, stream) -> None:
    """dst <- src (contiguous CuPy arrays of the same byte size, on any devices):
    one cudaMemcpyPeerAsync on ``stream``."""
    import cupy as cp

    for name, a in (("dst", dst), ("src", src)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if dst.nbytes != src.nbytes:
        raise ValueError(f"sizes differ: {dst.nbytes} vs {src.nbytes} bytes")
    cp.cuda.runtime.memcpyPeerAsync(
        dst.data.ptr, dst.device.id, src.data.ptr, src.device.id, src.nbytes,
        stream.ptr,
    )  # fmt: skip


def grow_buffers(m: gs.Model, bf: gs.Buffers, pos: int, stacks: int) -> gs.Buffers:
    """New buffers for position pos holding bf's caches (made for pos - 1): self
    caches slots < pos, cross caches every slot bf had (ring slots keep their
    index). On the current device and stream."""
    b = bf.x.shape[1]
    nb = gs.new_buffers(m, b, pos, stacks)
    old = bf.k.shape[4]
    if old != pos:
        raise ValueError(f"bf was made for position {old - 1}, not {pos - 1}")
    nb.k[..., :old, :] = bf.k
    nb.v[..., :old, :] = bf.v
    sx = bf.xk.shape[3]
    nb.xk[..., :sx, :] = bf.xk
    nb.xv[..., :sx, :] = bf.xv
    return nb


class MultiStag:
    """A placed p = 2 StagFormer: ``stages[s]`` runs stack s (see the module
    docstring for the ordering). Buffers are made for one position at a time."""

    def __init__(self, stages: list[Stage], b: int, pos: int):
        import cupy as cp

        self.stages, self.b, self.pos, self.tick = stages, b, pos, 0
        c = stages[0].model.C
        for st in stages:
            with cp.cuda.Device(st.device), st.stream:
                st.bufs = gs.new_buffers(st.model, b, pos, st.stacks)
                st.e = cp.zeros((b, c), cp.float32)
                if st.plan.source is not None:
                    st.recv = [cp.zeros((b, c), cp.float32) for _ in range(2)]
                    st.consumed = [cp.cuda.Event(disable_timing=True) for _ in "ab"]
                if st.plan.sink is not None:
                    st.sent = [cp.cuda.Event(disable_timing=True) for _ in "ab"]
                st.done = cp.cuda.Event(disable_timing=True)
        with cp.cuda.Device(stages[0].device):
            self._fork = cp.cuda.Event(disable_timing=True)
        self.synchronize()

    # --- state -----------------------------------------------------------------

    def synchronize(self) -> None:
        for st in self.stages:
            st.stream.synchronize()

    def reset_events(self) -> None:
        """Forget the sent/consumed records (call after ``synchronize``, e.g. before
        capturing steps into a CUDA graph: a capture must not wait on an event
        recorded outside it)."""
        self.synchronize()
        for st in self.stages:
            st.flags.clear()

    def prime(self, h_prev) -> None:
        """Put stack 1's output of position pos - 1 (B, C) float32, on any device,
        where the next step's stage 1 reads it (starting from a state at pos > 0)."""
        import cupy as cp

        st = self.stages[1]
        _check_bc("h_prev", h_prev, self.b, st.model.C)
        with cp.cuda.Device(h_prev.device.id):  # h_prev may come from any stream
            cp.cuda.Device().synchronize()
        with cp.cuda.Device(st.device):
            copy_async(st.recv[(self.tick - 1) % 2], h_prev, st.stream)
        self.reset_events()

    def grow(self, pos: int) -> None:
        """Re-make every stage's buffers for position pos (after step pos - 1),
        on the stage's stream, keeping the caches."""
        import cupy as cp

        if pos != self.pos + 1:
            raise ValueError(f"grow to pos {self.pos + 1} (buffers: {self.pos}), {pos}")
        for st in self.stages:
            with cp.cuda.Device(st.device), st.stream:
                st.bufs = grow_buffers(st.model, st.bufs, pos, st.stacks)
        self.pos = pos

    def load(self, bf: gs.Buffers) -> None:
        """Copy the caches of a single-device gs.Buffers made for the same position
        (stacks=2 layout) into the stages: stack s's self caches to stage s, stack
        2's cross caches to stage 1. Synchronizes bf's device first."""
        import cupy as cp

        if bf.k.shape[4] != self.pos + 1 or bf.x.shape[1] != self.b:
            raise ValueError("bf was made for another position or batch")
        with cp.cuda.Device(bf.k.device.id):
            cp.cuda.Device().synchronize()
        for st in self.stages:
            s, sb = st.plan.stack, st.stacks - 1  # slot of stack s in st.bufs
            with cp.cuda.Device(st.device):
                for j in range(st.model.L):
                    copy_async(st.bufs.k[j, sb], bf.k[j, s], st.stream)
                    copy_async(st.bufs.v[j, sb], bf.v[j, s], st.stream)
                    if s:
                        copy_async(st.bufs.xk[j], bf.xk[j], st.stream)
                        copy_async(st.bufs.xv[j], bf.xv[j], st.stream)
        self.synchronize()

    def outputs(self):
        """(h, o): stack 1's and stack 2's outputs of the last step, on their
        devices (views into the buffers: synchronize before reading)."""
        return self.stages[0].bufs.out[0], self.stages[1].bufs.out[1]

    # --- one step --------------------------------------------------------------

    def step(self, e, pos: int, *, version: int = 2, origin=None):
        """Decode step pos. e: (B, C) float32 embeddings on stage 0's device (copied
        to the other stages on their streams), or one such array a stage on its
        device. Returns (h_pos, o_pos) (views; ordered on ``origin``)."""
        import cupy as cp

        es = list(e) if isinstance(e, (list, tuple)) else [e]
        version = gs.runnable_version(version)  # ValueError, or this card's fallback
        if len(es) not in (1, len(self.stages)):
            raise ValueError(f"e: one array, or one a stage ({len(self.stages)})")
        for i, a in enumerate(es):
            _check_bc(
                f"e[{i}]", a, self.b, self.stages[0].model.C, self.stages[i].device
            )
        if pos != self.pos:
            raise ValueError(f"buffers were made for pos = {self.pos}, not {pos}")
        with cp.cuda.Device(self.stages[0].device):
            origin = origin or cp.cuda.get_current_stream()
            self._fork.record(origin)
        for st in self.stages:
            with cp.cuda.Device(st.device):
                st.stream.wait_event(self._fork)
        t = self.tick
        for s, st in enumerate(self.stages):
            with cp.cuda.Device(st.device), st.stream:
                if s == 0 or len(es) > 1:
                    st.bufs.x[...] = es[s][None]
                else:
                    copy_async(st.e, es[0], st.stream)
                    st.bufs.x[...] = st.e[None]
                if st.plan.source is not None and pos > 0:
                    self._receive(st, pos, t, version)
                gs.run_layers(st.model, st.bufs, [st.plan.stack], pos, version)
                if st.plan.sink is not None:
                    self._send(st, self.stages[st.plan.sink], t)
                st.done.record(st.stream)
        with cp.cuda.Device(self.stages[0].device):
            for st in self.stages:
                origin.wait_event(st.done)
        self.tick += 1
        return self.outputs()

    def _receive(self, st: Stage, pos: int, t: int, version: int) -> None:
        """Stage st's cross caches take h_{pos-1}, sent by the previous stage in
        the previous step into recv[(t - 1) % 2]."""
        k = (t - 1) % 2
        src = self.stages[st.plan.source]
        if src.flags.get(("sent", k)):
            st.stream.wait_event(src.sent[k])
        gs.project_memory(st.model, st.bufs, st.recv[k], pos, version)
        st.consumed[k].record(st.stream)
        st.flags[("consumed", k)] = True

    def _send(self, st: Stage, dst: Stage, t: int) -> None:
        """Copy this step's output h_pos (B x C float32) into dst.recv[t % 2], once
        dst has finished reading it (the step before), and record sent[t % 2]."""
        k = t % 2
        if dst.flags.get(("consumed", k)):
            st.stream.wait_event(dst.consumed[k])
        copy_async(dst.recv[k], st.bufs.out[st.plan.stack], st.stream)
        st.sent[k].record(st.stream)
        st.flags[("sent", k)] = True


def _check_bc(name, a, b, c, device=None) -> None:
    """(B, C) float32, C-contiguous, on ``device`` (default: wherever it is)."""
    import cupy as cp

    if device is None:
        device = a.device.id if isinstance(a, cp.ndarray) else cp.cuda.Device().id
    with cp.cuda.Device(device):
        rt.check_array(name, a, (np.float32,), 2)
    rt.check_shape(name, a, (b, c), "BC")


def transfer_bytes(b: int, c: int) -> int:
    """Bytes that cross between two stages a step: one memory row, B x C float32."""
    return 4 * b * c


def stage_bytes(b, s, c, f, h, g, d, l_stack, item, sx=None) -> tuple[int, int]:
    """Fewest bytes each stage reads a step (gs.step_bytes split by stack): stack 1
    = half the plain model of 2L layers; stack 2 = the separate-weight staggered
    step minus stack 1 (its L layers, the cross sublayers and projection, its self
    and cross caches). Shared weights: each device reads its own copy, so the same."""
    plain = gs.step_bytes("plain", b, s, c, f, h, g, d, l_stack, item, sx)
    sep = gs.step_bytes("separate", b, s, c, f, h, g, d, l_stack, item, sx)
    return plain // 2, sep - plain // 2


def floor_us(stack1: int, stack2: int, xfer: int, read_bw: float, peer_bw: float):
    """The two-device step's floor: max(stack bytes) / read bandwidth + the memory
    row over the peer bandwidth (us)."""
    return (max(stack1, stack2) / read_bw + xfer / peer_bw) * 1e6
