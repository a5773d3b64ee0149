"""Training program of kiln-shapes: VAE first, then CLIP text encoder + UNet on the VAE's latents.

Phases, each resumable from `work_dir/checkpoint.pt` (written every `checkpoint_every` steps):
1. `vae`: reconstruction (L1 + MSE) plus a small KL term on a fixed set of drawn images.
2. `latents`: encode the set once; keep posterior mean and std, and set `scaling_factor` = 1 / std
   of the latents (as Stable Diffusion does).
3. `unet`: v-prediction loss (Salimans & Ho 2022; epsilon if the schedule says so) whose x0 error
   counts min(SNR + snr_offset, 5) times (offset 0: min-SNR-5, Hang et al. 2023; offset 1 keeps the
   high-noise steps, where position is decided, at weight >= 1), 10 % of captions dropped to "" for
   classifier-free guidance; EMA of weights. `init_from` starts the UNet and text encoder from an
   exported model (a fine-tune) instead of a seeded initialisation.
Every random draw of step `k` comes from a generator seeded by (seed, phase, k), so a run that
resumes from a checkpoint makes the same model as one that never stopped.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kiln_shapes import checkpoint, data, models
from kiln_shapes.tokenizer import MAX_LENGTH, build_tokenizer

logger = logging.getLogger(__name__)
PHASE_SEEDS = {"vae": 1, "unet": 2}


@dataclass
class TrainConfig:
    """Defaults: the UNet phase is the run that made the committed model (38 minutes on a 2-core
    CPU, with `--vae-from`); the VAE phase is the CPU recipe checked by reconstruction (6 minutes)."""

    out_dir: str = "models/kiln-shapes"
    work_dir: str = "/tmp/kiln-shapes-train"
    preset: str = "small"
    seed: int = 0
    n_images: int = 10000
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_lr: float = 1.5e-3
    kl_weight: float = 1e-4
    vae_object_weight: float = 10.0
    unet_steps: int = 3000
    unet_batch: int = 64
    unet_lr: float = 2e-3
    warmup: int = 100
    cfg_dropout: float = 0.1
    ema_decay: float = 0.998
    min_snr: float = 5.0
    snr_offset: float = 0.0  # the x0 error counts min(SNR + snr_offset, min_snr) times
    checkpoint_every: int = 100
    vae_from: str = ""  # a Diffusers-layout model folder whose trained `vae` is reused (phase 1 skipped)
    init_from: str = ""  # a Diffusers-layout model folder whose unet + text_encoder start the UNet phase
    device: str = "cpu"
    threads: int = 2


def step_generator(cfg: TrainConfig, phase: str, step: int) -> torch.Generator:
    """The CPU generator of every random draw at `step` of `phase`."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + PHASE_SEEDS[phase] * 100_003 + step)


def make_dataset(cfg: TrainConfig) -> dict[str, Any]:
    """Images (N, 3, 64, 64) in [-1, 1] and their captions, drawn from the training combinations."""
    train_combos, _ = data.split_combinations()
    scenes = data.sample_scenes(cfg.n_images, seed=cfg.seed, combinations=train_combos)
    images = torch.from_numpy(data.to_tensor_range(data.draw_batch(scenes)))
    return {"images": images, "captions": [data.caption(s) for s in scenes]}


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """(N, 16) token ids, padded with EOS."""
    return tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimise(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """One update: gradients of `loss`, clipped to norm 1 over `params`, then the optimizer's step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay at `step`, warmed up from 0.1 so early averages are not stuck at the initial weights."""
    return min(decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------------------------------- VAE
def object_pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) 1.0 where a drawn scene differs from its background (its corner pixel, which no
    shape reaches), else 0.0."""
    return ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.02).float()


def vae_loss(vae: torch.nn.Module, x: torch.Tensor, gen: torch.Generator, kl_weight: float,
             object_weight: float = 0.0) -> torch.Tensor:
    """L1 + MSE reconstruction of x (B, 3, 64, 64) plus kl_weight * KL(q(z|x) || N(0, I)).

    Pixels of the object count `1 + object_weight` times as much as background pixels: a small
    shape covers ~3 % of the image, and without the weight the VAE learns the background long
    before it learns to keep the object's colour.
    """
    posterior = vae.encode(x).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=gen).to(x.device)
    z = posterior.mean + posterior.std * eps  # reparameterisation (Kingma & Welling 2014)
    recon = vae.decode(z).sample
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).sum(dim=(1, 2, 3)).mean()
    weight = 1.0 + object_weight * object_pixels(x)
    error = (recon - x).abs() + (recon - x).pow(2)
    return (weight * error).mean() / weight.mean() + kl_weight * kl / x[0].numel()


def train_vae(cfg: TrainConfig, state: dict[str, Any], dataset: dict[str, Any]) -> None:
    vae, optimizer = state["vae"], state["vae_opt"]
    vae.train()
    started = time.monotonic()
    while state["step"] < cfg.vae_steps:
        step = state["step"]
        gen = step_generator(cfg, "vae", step)
        idx = torch.randint(0, len(dataset["images"]), (cfg.vae_batch,), generator=gen)
        x = dataset["images"][idx].to(cfg.device)
        set_lr(optimizer, lr_at(step, cfg.vae_lr, cfg.warmup, cfg.vae_steps))
        loss = vae_loss(vae, x, gen, cfg.kl_weight, cfg.vae_object_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] = step + 1
        log_progress("vae", step + 1, cfg.vae_steps, loss.item(), started)
        maybe_checkpoint(cfg, state)
    vae.eval()


@torch.no_grad()
def encode_dataset(cfg: TrainConfig, vae: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Posterior mean and std (N, 4, 16, 16) of every image, and the latent scaling factor."""
    means, stds = [], []
    for chunk in images.split(256):
        posterior = vae.encode(chunk.to(cfg.device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = 1.0 / float(mean.std())
    logger.info("latents: %s, std %.4f -> scaling_factor %.5f", tuple(mean.shape), 1.0 / scaling, scaling)
    return {"mean": mean, "std": std, "scaling_factor": torch.tensor(scaling)}


# ---------------------------------------------------------------------------------------- UNet
def min_snr_weights(alpha_bar: torch.Tensor, gamma: float, prediction_type: str = "v_prediction",
                    offset: float = 0.0) -> torch.Tensor:
    """Per-sample loss weight that makes the loss min(SNR + offset, gamma) times the x0 error;
    SNR = a / (1 - a).

    An epsilon error is SNR times the x0 error (weight min(SNR + offset, gamma) / SNR); a v error is
    (SNR + 1) times it (weight min(SNR + offset, gamma) / (SNR + 1)). With offset 0 (min-SNR) the x0
    error at high noise counts ~SNR ~ 0 times; with offset 1 and v it counts at least once — there
    the prompt alone says where the object goes.
    """
    snr = alpha_bar / (1.0 - alpha_bar)
    weight = torch.clamp(snr + offset, max=gamma)
    if prediction_type == "epsilon":
        return weight / snr
    if prediction_type == "v_prediction":
        return weight / (snr + 1.0)
    raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")


def unet_loss(cfg: TrainConfig, state: dict[str, Any], batch: dict[str, torch.Tensor],
              gen: torch.Generator) -> torch.Tensor:
    """Weighted v- (or epsilon-) prediction MSE on one batch of latents (B, 4, 16, 16) and token ids (B, 16)."""
    z0 = batch["z0"]
    noise = torch.randn(z0.shape, generator=gen).to(cfg.device)
    t = torch.randint(0, models.SCHEDULE["num_train_timesteps"], (z0.shape[0],), generator=gen).to(cfg.device)
    alpha_bar = state["alphas_cumprod"][t].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * z0 + (1.0 - alpha_bar).sqrt() * noise  # q(z_t | z_0), DDPM eq. 4
    context = state["text_encoder"](batch["ids"]).last_hidden_state  # (B, 16, hidden)
    pred = state["unet"](noisy, t, encoder_hidden_states=context).sample
    prediction_type = models.SCHEDULE["prediction_type"]
    if prediction_type == "v_prediction":  # v = a^1/2 eps - (1 - a)^1/2 z0 (Salimans & Ho 2022)
        target = alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * z0
    else:
        target = noise
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
    weights = min_snr_weights(alpha_bar.view(-1), cfg.min_snr, prediction_type, cfg.snr_offset)
    return (weights * per_sample).mean()


def unet_batch(cfg: TrainConfig, state: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Sample latents from the stored posteriors, scale them, and drop captions for CFG."""
    latents, ids = state["latents"], state["ids"]
    idx = torch.randint(0, len(ids), (cfg.unet_batch,), generator=gen)
    eps = torch.randn(latents["mean"][idx].shape, generator=gen)
    z0 = (latents["mean"][idx] + latents["std"][idx] * eps) * latents["scaling_factor"]
    drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.cfg_dropout
    batch_ids = torch.where(drop[:, None], state["empty_ids"], ids[idx])
    return {"z0": z0.to(cfg.device), "ids": batch_ids.to(cfg.device)}


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def train_unet(cfg: TrainConfig, state: dict[str, Any]) -> None:
    params = [*state["unet"].parameters(), *state["text_encoder"].parameters()]
    optimizer = state["unet_opt"]
    state["unet"].train()
    state["text_encoder"].train()
    started = time.monotonic()
    while state["step"] < cfg.unet_steps:
        step = state["step"]
        gen = step_generator(cfg, "unet", step)
        set_lr(optimizer, lr_at(step, cfg.unet_lr, cfg.warmup, cfg.unet_steps))
        loss = unet_loss(cfg, state, unet_batch(cfg, state, gen), gen)
        optimise(optimizer, loss, params)
        decay = ema_decay_at(step, cfg.ema_decay)
        update_ema(state["ema_unet"], state["unet"], decay)
        update_ema(state["ema_text_encoder"], state["text_encoder"], decay)
        state["step"] = step + 1
        log_progress("unet", step + 1, cfg.unet_steps, loss.item(), started)
        maybe_checkpoint(cfg, state)


# ---------------------------------------------------------------------------------------- state
_last_log = {"t": 0.0}


def log_progress(phase: str, step: int, total: int, loss: float, started: float) -> None:
    """Log at most every 10 s (and at the end): step, loss, speed, time left."""
    now = time.monotonic()
    if now - _last_log["t"] < 10.0 and step != total:
        return
    _last_log["t"] = now
    rate = (now - started) / max(step, 1)
    logger.info("%s step %d/%d loss %.5f (%.2f s/step)", phase, step, total, loss, rate)


CHECKPOINTED = ("vae", "vae_opt", "text_encoder", "unet", "ema_unet", "ema_text_encoder", "unet_opt")


def maybe_checkpoint(cfg: TrainConfig, state: dict[str, Any], force: bool = False) -> None:
    """Write `checkpoint.pt` atomically every `checkpoint_every` steps (or when forced)."""
    if force or not state["step"] % cfg.checkpoint_every:
        checkpoint.save(cfg.work_dir, state, CHECKPOINTED, phase=state["phase"], step=state["step"], config=asdict(cfg))


def initial_state(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    """Fresh models (seeded) and optimizers, on `cfg.device`."""
    torch.manual_seed(cfg.seed)
    vae = (load_vae(cfg.vae_from) if cfg.vae_from else models.build_vae(cfg.preset)).to(cfg.device)
    text_encoder = models.build_text_encoder(cfg.preset, len(tokenizer), MAX_LENGTH)
    unet = models.build_unet(cfg.preset)
    if cfg.init_from:
        load_trained(cfg.init_from, unet, text_encoder)
    text_encoder, unet = text_encoder.to(cfg.device), unet.to(cfg.device)
    params = [*unet.parameters(), *text_encoder.parameters()]
    return {
        "phase": "unet" if cfg.vae_from else "vae", "step": 0, "vae": vae, "text_encoder": text_encoder, "unet": unet,
        "ema_unet": copy.deepcopy(unet).requires_grad_(False),
        "ema_text_encoder": copy.deepcopy(text_encoder).requires_grad_(False),
        "vae_opt": torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0),
        "unet_opt": torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01),
        "alphas_cumprod": models.alphas_cumprod().to(cfg.device),
    }


def load_vae(folder: str) -> torch.nn.Module:
    """The trained `AutoencoderKL` of a Diffusers-layout model folder, in float32."""
    from worker.models import AutoencoderKL

    logger.info("reusing the VAE of %s; VAE phase skipped", folder)
    return AutoencoderKL.from_pretrained(folder, subfolder="vae")


def load_trained(folder: str, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
    """Copy the `unet` and `text_encoder` weights of an exported model (any dtype) into fresh float32
    networks of the same preset; a preset that does not match fails on the first mismatched tensor."""
    from safetensors.torch import load_file

    logger.info("starting the UNet phase from the unet and text encoder of %s", folder)
    for module, sub, name in ((unet, "unet", "diffusion_pytorch_model"), (text_encoder, "text_encoder", "model")):
        weights = load_file(str(Path(folder) / sub / f"{name}.safetensors"))
        module.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)


def resume(cfg: TrainConfig, state: dict[str, Any]) -> None:
    """Load `checkpoint.pt` from `cfg.work_dir` into `state`, if there is one."""
    if payload := checkpoint.load(cfg.work_dir, state, CHECKPOINTED, cfg.device):
        state["phase"], state["step"] = payload["phase"], payload["step"]


# ---------------------------------------------------------------------------------------- export
def export(cfg: TrainConfig, state: dict[str, Any], tokenizer: Any, scaling_factor: float,
           weights: str = "ema") -> Path:
    """Save a Stable Diffusion pipeline (fp16 files) in `cfg.out_dir`.

    Args:
        weights: "ema" (the exponential moving average of the UNet and text encoder) or "raw"
            (the optimiser's current weights; better when training stopped early).
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    prefix = "ema_" if weights == "ema" else ""
    from worker.models import AutoencoderKL
    from worker.pipelines import StableDiffusionPipeline
    from worker.schedulers import DPMSolverMultistepScheduler

    vae = AutoencoderKL.from_config(dict(state["vae"].config), scaling_factor=scaling_factor)
    vae.load_state_dict({k: v.cpu() for k, v in state["vae"].state_dict().items()})
    pipe = StableDiffusionPipeline(
        vae=vae.half(), text_encoder=copy.deepcopy(state[prefix + "text_encoder"]).cpu().half(), tokenizer=tokenizer,
        unet=copy.deepcopy(state[prefix + "unet"]).cpu().half(),
        scheduler=DPMSolverMultistepScheduler.from_config(models.scheduler_config()),
    )
    folder = pipe.save_pretrained(cfg.out_dir)
    logger.info("saved kiln-shapes pipeline to %s", folder)
    return Path(folder)


def cached_latents(cfg: TrainConfig, vae: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """`encode_dataset`, saved to (and on resume read from) `work_dir/latents.pt`."""
    path = Path(cfg.work_dir) / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    latents = encode_dataset(cfg, vae, images)
    torch.save(latents, path)
    return latents


def export_checkpoint(cfg: TrainConfig, weights: str = "ema", scaling_factor: float | None = None) -> Path:
    """Export the pipeline from `work_dir/checkpoint.pt` as it stands (e.g. to stop a run early)."""
    tokenizer = build_tokenizer(Path(cfg.work_dir) / "tokenizer")
    state = initial_state(cfg, tokenizer)
    resume(cfg, state)
    if scaling_factor is None:
        scaling_factor = float(torch.load(Path(cfg.work_dir) / "latents.pt", weights_only=True)["scaling_factor"])
    return export(cfg, state, tokenizer, scaling_factor, weights)


def run(cfg: TrainConfig) -> Path:
    """Train all phases (resuming where a checkpoint left off) and export the pipeline."""
    torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # no-op on CPU
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(Path(cfg.work_dir) / "tokenizer")
    state = initial_state(cfg, tokenizer)
    resume(cfg, state)
    dataset = make_dataset(cfg)
    logger.info("dataset: %d images; config %s", len(dataset["captions"]), asdict(cfg))
    if state["phase"] == "vae":
        train_vae(cfg, state, dataset)
        state["phase"], state["step"] = "unet", 0
        maybe_checkpoint(cfg, state, force=True)
    state["latents"] = cached_latents(cfg, state["vae"], dataset["images"])
    state["ids"] = tokenize(tokenizer, dataset["captions"])
    state["empty_ids"] = tokenize(tokenizer, [""])[0]
    train_unet(cfg, state)
    maybe_checkpoint(cfg, state, force=True)
    return export(cfg, state, tokenizer, float(state["latents"]["scaling_factor"]))
