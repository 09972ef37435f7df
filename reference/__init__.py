"""Pure-NumPy references: the specification every kernel and chapter is checked against.

Every module imports NumPy and the standard library, and no module outside this
package. Within it: common, models, testing and ffn_approx import nothing else;
deja_vu, stagformer and minilm import reference.common; precompute and
slim_attention import reference.common and reference.models (their paper tables
count with the model configurations); decoder (the capstone, the tricks composed)
imports common, precompute, slim_attention and deja_vu. The one module that needs
more than NumPy to run is minilm: load_minilm imports safetensors and
load_minilm_tokenizer imports tokenizers, inside the functions, so that importing
it needs only NumPy.
"""
