"""I_att at every activation point of the demo generator, on hidden true latents (no embedding):
how much of each region comes from its source. Prints a table (BUILD_NOTES, issue 8).

    python -m experiments.feature_transfer_points
"""

import i2spp_jax
from experiments import cli, edit_cli
from i2spp_jax import apps, masks


def main(argv):
    del argv
    G = i2spp_jax.demo_generator()
    va, vb = edit_cli.hidden_vars(G, 100), edit_cli.hidden_vars(G, 130)  # the feature_transfer demo's latents
    ra, rb = apps.common.render(G, va)[0], apps.common.render(G, vb)[0]
    left = masks.half(G.img_resolution, "left")
    print("point       noise        M vs a (dB)  rest vs b (dB)")
    for point in G.config.activation_names:
        for mix in (True, False):
            out = apps.combine(G, va, vb, left, point=point, mix_noise=mix)[0]
            print(f"{point:11s} {'mixed' if mix else 'a only':12s} {edit_cli.region_psnr(out, ra, left):11.2f} "
                  f"{edit_cli.region_psnr(out, rb, 1 - left):14.2f}")


if __name__ == "__main__":
    cli.run(main)
