"""The embedding engine, one job per module (users import it through `i2spp_jax.embed`):

    phases     the paper's building blocks W_l, Mk_n, M_st (and Joint) as `Phase` settings; schedules
    variables  the W+/noise pytree, its initial values, label tree, optimisers and masks
    step       one pure optimisation step for one image; its jitted, vmapped, cached form
    driver     `embed`: runs phases on a batch with progress, checkpoints and resume
"""
