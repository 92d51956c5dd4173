"""The embedding engine: optimise W+ and noise maps so that G(w, n) matches target images.

    vars = initial_variables(G, batch=2, w_init="w_avg", noise_init="normal", seed=0)
    result = embed(G, target, init_vars=vars, phases=schedule("w_then_noise", 5000, 3000), vgg=vgg)
    result.vars["w_plus"]        # [B, num_ws, w_dim]
    result.phase_vars[0]         # the variables after the W+ phase (the "W+ result")

Everything the optimisation changes lives in one pytree per image, {"w_plus": [num_ws, w_dim],
"noise": [[R, R], ...]}, with a leading batch axis. The paper's building blocks are `Phase`
settings (`W_l`, `Mk_n`, `M_st`) of one pure `step` function; each phase names its mask set and its
y, so one `embed()` call runs a whole algorithm (e.g. inpainting's masked W+ phase, then the noise
phase against the render of the W+ result). `step` handles ONE image; `embed` applies `jax.vmap`
over images and `jax.jit` once per phase setting for the life of the process, with the generator
and VGG passed as arguments (never closure constants).

This module is the engine's public face; the engine lives in `i2spp_jax.engine` (phases,
variables, step, driver), a module per job.
"""

from i2spp_jax.engine.driver import (HISTORY_KEYS, CheckpointMismatchError, EmbedResult, NonFiniteLossError,
                                     data_hash, embed, history_to_json)
from i2spp_jax.engine.phases import (DEFAULT_MASKS, SCHEDULES, Y_SOURCES, Joint, LossWeights, M_st, Mk_n, Phase,
                                     W_l, modconv_for, phase_key, schedule)
from i2spp_jax.engine.step import LOSS_TERMS, compiled_step, evaluate, psnr, render, step
from i2spp_jax.engine.variables import (LOSS_MASKS, NOISE_INITS, W_INITS, Vars, initial_variables, labels,
                                        make_masks, make_optimizer)

__all__ = [
    "CheckpointMismatchError", "DEFAULT_MASKS", "EmbedResult", "HISTORY_KEYS", "Joint", "LOSS_MASKS", "LOSS_TERMS", "LossWeights", "M_st",
    "Mk_n", "NOISE_INITS", "NonFiniteLossError", "Phase", "SCHEDULES", "Vars", "W_INITS", "W_l", "Y_SOURCES",
    "compiled_step", "data_hash", "embed", "evaluate", "history_to_json", "initial_variables", "labels",
    "make_masks", "make_optimizer", "modconv_for", "phase_key", "psnr", "render", "schedule", "step",
]
