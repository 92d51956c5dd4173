"""Embed every image of a folder: batches split over all local devices, hosts sharing the files,
every finished image written at once, a killed run resumed without redoing anything finished.

Commands (each a complete configuration):

    # The shipped held-out photographs into the demo generator (demo preset: W+ 600 + noise 600).
    python -m experiments.embed_folder --images=i2spp_jax/assets/fmnist_test --out=runs/folder

    # One GPU, or every GPU of a machine (all local devices are used; --devices=N takes the first N):
    # the paper's settings (W+ 5000 + noise 3000, VGG at 256), 8 images per device and batch.
    python -m experiments.embed_folder --images=faces/ --out=runs/faces --generator=ckpt/ffhq1024 \\
        --batch_per_device=8

    # Several hosts (a GPU cluster, a TPU pod slice): the same command on every host, with the
    # coordinator's address; each host embeds its share of the files on its own devices. The
    # folders must be on a file system that every host sees. Under SLURM or on a TPU pod slice,
    # --distributed alone finds the coordinator (jax.distributed.initialize()).
    python -m experiments.embed_folder --images=/data/faces --out=/data/runs/faces \\
        --generator=/data/ffhq1024 --coordinator_address=host0:1234 --num_processes=4 --process_id=$RANK

    # A seconds-long smoke run: 10 + 10 iterations, random-weight VGG.
    python -m experiments.embed_folder --images=DIR --out=/tmp/f --smoke

Outputs in --out:
    results/NAME_EXT/   one folder per embedded image (images/a/b.png -> results/a/b_png/; a folder
                        named like a result, a_png/ or x.d/, gets .d: images/a_png/b.png ->
                        results/a_png.d/b_png/, never inside a.png's), written whole into a temporary
                        folder and renamed into place: w_plus.npy [num_ws, w_dim], noise/noise_*.npy,
                        result.png, metrics.json (PSNR/SSIM per phase, the file's sha256, the batch it
                        ran in). A folder here = finished. An --out of an earlier version, whose
                        folders were not marked, has its results moved to these names when resumed.
    failed/NAME_EXT.json  an image that could not be used (unreadable, corrupt, too large to decode,
                        wrongly sized, or its loss became NaN) and why; retried only when the file
                        changes. Any error reading one file fails that file alone.
    manifest.json       every image's status (done / failed / pending) with its PSNR or reason, and
                        the summary; rewritten after every batch (several hosts: one per host,
                        manifest.process<i>.json, merged into manifest.json at the end).
    ckpt/process<i>-batch-<id>/  the unfinished batch's checkpoint (<id> = a hash of its images'
                        names and contents); a restart re-forms the same batch and resumes it;
                        removed once the batch's results are written (what a kill left between
                        the two goes when the host has finished its share).
    run.json            the settings and the generator's content digest: the same command resumes;
                        other settings or another generator (even at the same path) are refused, --fresh
                        moves the old folder aside. The batch size and device count are not settings:
                        a run may resume on another machine (unfinished batches then start over).

An image at another size than the generator's is refused (listed in failed/) unless --resize:
embeddings are only as good as the alignment of the crops they are given. A run in which every image
failed ends with an error (exit status 2) naming failed/.
"""

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from experiments import cli, presets
from experiments.folder_store import (IMAGE_EXTS, Store, file_stat, host_share, image_seed,
                                      list_images, merge_manifests, read_failure, read_image, result_name,
                                      summarize)
from experiments.progress import Progress
from i2spp_jax import embed, io, metrics
from i2spp_jax.engine import sharding



@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """One folder run. None fields take the preset's value (demo / paper / smoke)."""

    images: str  # the folder of images (searched recursively; hidden files and --out skipped)
    out: str = "runs/folder"  # output folder
    generator: str = "demo"  # "demo", a converted checkpoint dir, or a source .pkl/.pt
    preset: Optional[str] = None  # "demo", "paper" or "smoke"; None = demo for the demo generator, else paper
    schedule: str = "w_then_noise"  # see embed.SCHEDULES
    w_steps: Optional[int] = None  # W+ iterations (paper: 5000)
    noise_steps: Optional[int] = None  # noise iterations (paper: 3000)
    w_lr: float = 0.01  # Adam lr for W+
    w_optimizer: str = "adam"  # "adam" or "sgd"
    noise_lr: float = 5.0  # Adam lr for the noise maps
    percept: float = 1e-5  # λ_p of the W+ phase
    resize_to: Optional[int] = None  # VGG input size; None = preset
    vgg: str = "imagenet"  # "imagenet", "random" (tests), or a weights path
    w_init: str = "w_avg"  # "w_avg", "uniform" or "uniform_0.4"
    noise_init: str = "normal"  # "normal" or "const"
    compute_dtype: str = "float32"  # "bfloat16": G's and VGG's convolutions in bf16 (the GPU fast mode)
    float32_tail: float = 0.1  # bfloat16 only: the fraction of each phase, at its end, run in float32
    float32_head: float = 0.1  # bfloat16 only: the fraction of each phase, at its start, run in float32
    # bfloat16 only: float32 once an image reaches this PSNR (dB); "auto" = 10 dB under bf16's rounding
    # floor (embed's default); None = never
    float32_above_db: Union[str, float, None] = "auto"
    seed: int = 0  # each image's draws come from (seed, its name): independent of batching
    resize: bool = False  # convert images of another size (else they are refused)
    batch_per_device: int = 4  # images per device in one batch
    devices: int = 0  # local devices to use (0 = all)
    checkpoint_every: int = 500  # orbax checkpoint of the running batch every this many iterations


# Not part of the run: changing them resumes the same run (results do not depend on them beyond
# float rounding; an unfinished batch re-formed differently starts over).
_NOT_SETTINGS = ("out", "batch_per_device", "devices", "checkpoint_every")


# ----------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class _Item:
    key: str
    image: np.ndarray  # [R, R, C] in [-1, 1]
    sha256: str
    notes: list


def _plan(cfg: FolderConfig, G):
    with cli.user_input("--preset"):
        preset, w, n, r = presets.resolve(cfg.preset, cfg.generator, G.img_resolution, w_steps=cfg.w_steps,
                                          noise_steps=cfg.noise_steps, resize_to=cfg.resize_to)
    with cli.user_input(f"--schedule={cfg.schedule}"):
        phases = embed.schedule(cfg.schedule, w, n, w_lr=cfg.w_lr, w_optimizer=cfg.w_optimizer,
                                noise_lr=cfg.noise_lr, percept=cfg.percept, resize_to=r)
    return preset, phases, r


def _mesh(cfg: FolderConfig):
    local = jax.local_devices()
    if cfg.devices > len(local):
        raise cli.UserError(f"--devices={cfg.devices}, but this host has {len(local)} {local[0].platform} "
                            f"device(s); give at most {len(local)} (0 = all)")
    return sharding.batch_mesh(local[:cfg.devices or len(local)])


def _settings(cfg: FolderConfig, phases) -> dict:
    settings = presets.run_settings(cfg, exclude=_NOT_SETTINGS)
    settings["images"] = os.path.abspath(cfg.images)
    return {"settings": settings, "phases": [embed.phase_key(p) for p in phases]}


@dataclasses.dataclass(frozen=True)
class Hosts:
    """This process's place among the hosts of a run, and how they wait for each other."""

    index: int = 0  # jax.process_index()
    count: int = 1  # jax.process_count()
    barrier: Callable[[str], None] = lambda name: None  # every host reaches `name` (sync_global_devices)
    broadcast: Callable[[bool], bool] = lambda flag: flag  # process 0's value, on every host


def _prepare(cfg, fingerprint, fresh, log, hosts: Hosts):
    """Process 0 makes (or checks, or with --fresh moves aside) the run folder and locks it, and tells
    the others whether it could; they then check that it holds their run. A refusal stops every host."""
    refused = None
    if hosts.index == 0:
        try:  # process 0 holds OUT/.lock: a second run into the folder is refused (the other hosts share it)
            cli.prepare_out(cfg.out, fingerprint, fresh=fresh, log=log, derived=("phases",), lock=True)
        except cli.UserError as e:
            refused = e
    if hosts.broadcast(refused is not None):
        raise refused or cli.UserError(f"process 0 refused --out={cfg.out}; its message says why")
    if hosts.index != 0:
        cli.prepare_out(cfg.out, fingerprint, fresh=False, log=log, derived=("phases",))


def _initial(G, cfg: FolderConfig, items: list, size: int):
    """Each image's own start (seeded by its name), the first repeated as padding up to `size`."""
    per_image = [embed.initial_variables(G, 1, w_init=cfg.w_init, noise_init=cfg.noise_init,
                                         seed=image_seed(cfg.seed, it.key)) for it in items]
    per_image += [per_image[0]] * (size - len(items))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *per_image)


def _batch_id(items: list, fingerprint: dict) -> str:
    h = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode())
    for it in items:
        h.update(f"{it.key}\0{it.sha256}\0".encode())
    return h.hexdigest()[:16]


def _quality(img, target) -> dict:
    a, b = jnp.clip(jnp.asarray(img)[None], -1, 1), jnp.asarray(target)[None]
    return {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0])}


def embed_folder(cfg: FolderConfig, *, fresh: bool = False, log: Callable[[str], None] = cli.log,
                 hosts: Hosts = Hosts(), progress_stream=None) -> dict:
    """Embeds this host's share of cfg.images into cfg.out; returns the summary of the share.

    Args:
      hosts: this process's place among the hosts (after jax.distributed.initialize); each takes
        every hosts.count-th image. The default: one host.
    """
    if not os.path.isdir(cfg.images):
        raise FileNotFoundError(f"--images={cfg.images}: no such folder; give a folder of images")
    if cfg.batch_per_device < 1:
        raise cli.UserError(f"--batch_per_device={cfg.batch_per_device}: give at least 1")
    if cfg.w_init not in ("w_avg", "uniform", "uniform_0.4"):
        raise cli.UserError(f"--w_init={cfg.w_init}: a folder run takes w_avg, uniform or uniform_0.4")
    keys, ignored = list_images(cfg.images, cfg.out)
    if not keys:
        raise cli.UserError(f"--images={cfg.images}: no image files in it (looked for "
                            f"{', '.join(IMAGE_EXTS)}, in subfolders too)")
    cli.generator_config(cfg.generator)  # a missing or damaged checkpoint is refused before loading
    mesh = _mesh(cfg)
    G = cli.load_generator(cfg.generator)
    preset, phases, resize_to = _plan(cfg, G)
    fingerprint = _settings(cfg, phases)
    # the generator's content, not only its path: another generator saved there is refused in one line
    run_record = dict(fingerprint, generator_digest=cli.generator_digest(G))
    _prepare(cfg, run_record, fresh, log, hosts)
    process_index, process_count = hosts.index, hosts.count

    share = host_share(keys, process_index, process_count)
    store = Store(cfg.out, cfg.images, share, process_index, process_count)
    size = cfg.batch_per_device * mesh.size
    log(f"{len(keys)} images in {cfg.images}" + (f" ({ignored} other files ignored)" if ignored else "")
        + (f"; this host (process {process_index} of {process_count}) takes {len(share)}" if process_count > 1 else "")
        + f"; {len(store.done)} done before, {len(store.failed)} failed before, {len(store.pending())} to embed")
    log(f"generator {cfg.generator}: {G.img_resolution}x{G.img_resolution}; preset {preset}; "
        + " -> ".join(f"{p.name} {p.num_steps}" for p in phases) + f"; VGG at {resize_to}; batches of {size} "
        f"({cfg.batch_per_device} per device on {mesh.size} {mesh.devices.flat[0].platform} device(s))")
    if store.renamed:
        log(f"{len(store.renamed)} result(s) of an earlier version moved to their names now (e.g. "
            f"results/{result_name(store.renamed[0])}: a folder named like an image's result gets .d)")
    if store.changed:
        log(f"{len(store.changed)} finished image(s) changed since they were embedded (e.g. {store.changed[0]}); "
            "their results are kept: delete their results/ folders to embed them again")
    vgg = None
    if store.pending() and any(p.weights.percept or p.weights.style for p in phases):
        with cli.user_input(f"--vgg={cfg.vgg}", "give 'imagenet', 'random', or VGG16 weights"):
            vgg = cli.load_vgg(cfg.vgg)

    progress = Progress(len(share), len(store.done), len(store.failed), progress_stream)
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "images": 0, "failed": 0, "seconds": 0.0,
               "devices": f"{mesh.size} {mesh.devices.flat[0].platform}", "batch": size}
    t0 = time.perf_counter()
    pending = collections.deque(store.pending())
    # batch ids hash the settings without the digest: an unfinished batch of an earlier version resumes
    run = _BatchRun(cfg, G, phases, vgg, mesh, size, store, fingerprint, progress, session)
    while pending:
        items = run.next_batch(pending)
        if items:
            run.embed(items, pending)
            session["seconds"] = time.perf_counter() - t0
            store.write_manifest(run_record, _share_summary(store, session))
    progress.close()
    store.tidy()
    session["seconds"] = time.perf_counter() - t0
    summary = _share_summary(store, session)
    store.write_manifest(run_record, summary)
    for line in summary_table(summary, store, phases):
        log(line)
    hosts.barrier("i2spp_folder_done")
    everything = summary
    if process_count > 1 and process_index == 0:
        everything = merged = merge_manifests(cfg.out, process_count)["summary"]
        log(f"all {process_count} hosts: {merged['done']} of {merged['images']} images embedded, "
            f"{merged['failed']} failed" + (f"; PSNR mean {merged['psnr_mean']:.2f} dB, min {merged['psnr_min']:.2f} "
                                            f"dB ({merged['psnr_min_image']})" if merged["done"] else ""))
    if (process_count == 1 or process_index == 0) and everything["failed"] == everything["images"]:
        raise cli.UserError(f"all {everything['images']} images of --images={cfg.images} failed; the reasons are in "
                            f"{os.path.join(cfg.out, 'failed')}/ and {os.path.join(cfg.out, 'manifest.json')}")
    return summary


@dataclasses.dataclass
class _BatchRun:
    """Forms batches from the pending images and embeds them, recording every outcome."""

    cfg: FolderConfig
    G: object
    phases: tuple
    vgg: object
    mesh: object
    size: int  # images per batch, over all devices
    store: Store
    fingerprint: dict
    progress: Progress
    session: dict

    def next_batch(self, pending: collections.deque) -> list:
        """Up to `size` readable images from the front of the queue; unreadable ones are recorded."""
        items = []
        while pending and len(items) < self.size:
            key = pending.popleft()
            try:
                img, notes, sha = read_image(self.store.source(key), self.G.img_resolution, self.G.img_channels,
                                             self.cfg.resize)
            except Exception as e:  # any error reading one file is that file's (folder_store.read_failure)
                self.store.fail(key, "read", *read_failure(e))
                self.session["failed"] += 1
                self.progress.finished(failed=1)
                continue
            items.append(_Item(key, img, sha, notes))
        return items

    def embed(self, items: list, pending: collections.deque) -> None:
        """Embeds one batch (padded to `size`) from its checkpoint if it has one, and writes each image's
        results. An image whose loss becomes NaN fails; the others go back to the front of the queue."""
        batch_id = _batch_id(items, self.fingerprint)
        ckpt = self.store.checkpoint_dir(batch_id)
        stack = jnp.stack([it.image for it in items] + [items[0].image] * (self.size - len(items)))
        total = sum(p.num_steps for p in self.phases)
        init = _initial(self.G, self.cfg, items, self.size)
        try:
            result = embed.embed(self.G, stack, phases=self.phases, init_vars=init, vgg=self.vgg, seed=self.cfg.seed,
                                 log_every=0, log=self.progress.message, checkpoint_dir=ckpt,
                                 checkpoint_every=self.cfg.checkpoint_every, mesh=self.mesh,
                                 callback=lambda t, m: self.progress.iteration(len(items), t, total),
                                 compute_dtype=self.cfg.compute_dtype,
                                 float32_tail=self.cfg.float32_tail, float32_head=self.cfg.float32_head,
                                 float32_above_db=self.cfg.float32_above_db)
        except embed.NonFiniteLossError as e:
            bad = {items[i if i < len(items) else 0].key for i in e.images}  # padding repeats items[0]
            for it in items:
                if it.key in bad:
                    self.store.fail(it.key, "optimise", str(e))
            pending.extendleft(reversed([it.key for it in items if it.key not in bad]))
            shutil.rmtree(ckpt, ignore_errors=True)
            self.session["failed"] += len(bad)
            self.progress.finished(failed=len(bad))
            return
        _write_results(self.store, self.G, items, stack, self.phases, result, batch_id, self.size, self.mesh,
                       self.store.process_index)
        shutil.rmtree(ckpt, ignore_errors=True)
        self.session["images"] += len(items)
        self.progress.finished(done=len(items))


def _share_summary(store: Store, session: dict) -> dict:
    s = summarize(store.manifest({}, {})["images"])
    per_phase = collections.defaultdict(list)
    for r in store.done.values():
        for i, q in enumerate(r["per_phase"]):
            per_phase[(i, q["phase"])].append(q["psnr"])
    s["psnr_per_phase"] = [{"phase": name, "mean": float(np.mean(v)), "min": float(np.min(v))}
                           for (_, name), v in sorted(per_phase.items())]
    s["failures_by_stage"] = dict(collections.Counter(r["stage"] for r in store.failed.values()))
    s["session"] = dict(session, images_per_second=session["images"] / session["seconds"]
                        if session["seconds"] > 0 else None)
    return s


def summary_table(s: dict, store: Store, phases) -> list[str]:
    """The end-of-run table, as lines."""
    sess = s["session"]
    rows = [("images", f"{s['images']}"),
            ("embedded", f"{s['done']} ({sess['images']} in this session)"),
            ("failed", f"{s['failed']}" + (" (" + ", ".join(f"{k} {v}" for k, v in s["failures_by_stage"].items())
                                          + "; reasons in manifest.json)" if s["failed"] else "")),
            ("pending", f"{s['pending']}")]
    if s["done"]:
        rows.append(("final PSNR", f"mean {s['psnr_mean']:.2f} dB, min {s['psnr_min']:.2f} dB ({s['psnr_min_image']})"))
        for q in s["psnr_per_phase"][:-1]:
            rows.append((f"after {q['phase']}", f"mean {q['mean']:.2f} dB, min {q['min']:.2f} dB"))
    if sess["images"]:
        rows.append(("this session", f"{sess['images']} images in {sess['seconds']:.1f} s = "
                     f"{sess['images_per_second']:.3g} images/s ({sess['devices']} device(s), batch {sess['batch']}, "
                     "compiling included)"))
    width = max(len(k) for k, _ in rows)
    return [f"summary of {store.out}:"] + [f"  {k:<{width}}  {v}" for k, v in rows]


def _write_results(store, G, items, stack, phases, result, batch_id, size, mesh, process_index):
    """Each real image's results (the padding's dropped); stack: the padded batch of targets."""
    phase_imgs = [np.asarray(embed.evaluate(v, G, stack)[0]) for v in result.phase_vars]
    final = jax.device_get(result.vars)
    for b, it in enumerate(items):
        def write(folder, b=b, it=it):
            io.save_npy(os.path.join(folder, "w_plus.npy"), final["w_plus"][b])
            io.save_noise(os.path.join(folder, "noise"), [m[b] for m in final["noise"]], G.noise_names)
            io.save_image(os.path.join(folder, "result.png"), phase_imgs[-1][b])
            per_phase = [dict(phase=p.name, iterations=p.num_steps, **_quality(im[b], it.image))
                         for p, im in zip(phases, phase_imgs)]
            return {"image": it.key, "sha256": it.sha256, "file": file_stat(store.source(it.key)),
                    "notes": it.notes, "per_phase": per_phase, "final": per_phase[-1],
                    "batch": {"id": batch_id, "images": len(items), "size": size, "devices": mesh.size,
                              "seconds": result.seconds, "process": process_index},
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        store.finish(it.key, write)


# ----------------------------------------------------------------------------------------------
# Command line: parses flags, joins the hosts, calls embed_folder().

FLAGS = flags.FLAGS
_D = FolderConfig(images="")


def _define_flags() -> None:
    """The command's flags, defined when it runs (not at import: the tests import this module beside
    experiments.reconstruct, whose flags share names)."""
    flags.DEFINE_string("images", None, "the folder of images to embed (subfolders too)")
    flags.DEFINE_string("out", _D.out, "output folder")
    flags.DEFINE_string("generator", _D.generator, "'demo', a converted checkpoint dir, or a source .pkl/.pt")
    presets.define_flags(_D)
    flags.DEFINE_enum("w_init", _D.w_init, ["w_avg", "uniform", "uniform_0.4"], "initial W+")
    flags.DEFINE_integer("seed", _D.seed, "seed of the initialisation (each image's draw also depends on its name)")
    flags.DEFINE_bool("resize", _D.resize, "centre-crop and resize images of another size (default: refuse them)")
    flags.DEFINE_integer("batch_per_device", _D.batch_per_device, "images per device in a batch", lower_bound=1)
    flags.DEFINE_integer("devices", _D.devices, "local devices to use (0 = all)", lower_bound=0)
    flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "checkpoint the running batch every this many "
                         "iterations (0 = at phase ends only)", lower_bound=0)
    flags.DEFINE_bool("fresh", False, "if --out holds a run, move it aside to OUT.old-<time> and start over")
    flags.DEFINE_string("coordinator_address", None, "several hosts: host:port of process 0 (jax.distributed)")
    flags.DEFINE_integer("num_processes", None, "several hosts: how many", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "several hosts: this one's index (0 .. num_processes - 1)", lower_bound=0)
    flags.DEFINE_bool("distributed", False, "several hosts: call jax.distributed.initialize() and let it find the "
                      "cluster (SLURM, TPU pod slices, Open MPI)")


def _join_hosts() -> Hosts:
    """jax.distributed.initialize as the flags ask; this process's place among the hosts."""
    given = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise cli.UserError("several hosts need --coordinator_address, --num_processes and --process_id "
                                "together (or --distributed alone under SLURM / on a TPU pod slice)")
        if FLAGS.process_id >= FLAGS.num_processes:
            raise cli.UserError(f"--process_id={FLAGS.process_id} must be below --num_processes={FLAGS.num_processes}")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        try:
            jax.distributed.initialize()
        except ValueError as e:  # no cluster found around this process ("coordinator_address should be defined")
            raise cli.UserError(f"--distributed found no cluster to join ({e}): it works under SLURM, Open MPI or "
                                "on a TPU pod slice; elsewhere give --coordinator_address, --num_processes and "
                                "--process_id, or leave the flag out on one machine") from None
    if jax.process_count() == 1:
        return Hosts()
    from jax.experimental import multihost_utils

    return Hosts(jax.process_index(), jax.process_count(), multihost_utils.sync_global_devices,
                 lambda flag: bool(multihost_utils.broadcast_one_to_all(np.int32(flag))))


def main(argv):
    del argv
    # Before JAX starts: absl shows INFO, and the backends' start logs a line at INFO ("Unable to
    # initialize backend 'tpu'") before every error; orbax logs every checkpoint step at INFO.
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.images:
        raise cli.UserError("--images is required: the folder of images to embed")
    common = presets.from_flags(FLAGS, _D)
    hosts = _join_hosts()
    cfg = FolderConfig(images=FLAGS.images, out=FLAGS.out, generator=FLAGS.generator, w_init=FLAGS.w_init,
                       seed=FLAGS.seed, resize=FLAGS.resize, batch_per_device=FLAGS.batch_per_device,
                       devices=FLAGS.devices, checkpoint_every=FLAGS.checkpoint_every, **common)
    with cli.resumable(cfg.out):
        embed_folder(cfg, fresh=FLAGS.fresh, hosts=hosts)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
