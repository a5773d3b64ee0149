"""Training program of kiln-shapes-flux: a FLUX transformer + CLIP + T5 on the bundled VAE's latents.

1. `latents`: the training scenes (the 872 training combinations of `data.split_combinations`)
   are drawn and encoded once by the kiln-shapes VAE (posterior mean and std, cached in
   `latents.pt`); `shift_factor` = mean of the latents, `scaling_factor` = 1 / their std after the
   shift (FLUX's convention), written into the exported VAE config.
2. `flux`: rectified flow (Liu et al. 2022; Esser et al. 2024): x_σ = (1 − σ)·x_0 + σ·ε, the model
   predicts v = ε − x_0; σ logit-normal (m 0, s 1) then shifted by `flux_models.SHIFT`, as the exported
   scheduler samples. Transformer, CLIP and T5 encoders train jointly; 10 % of captions become ""
   (true CFG stays possible); AdamW, warm-up + cosine, gradient clipping, EMA (exported).
Every random draw of step `k` comes from a generator seeded by (seed, k), so a run resumed from
`checkpoint.pt` makes the same model as one that never stopped. Helpers shared with the UNet
trainer (`kiln_shapes.train`) are imported, not repeated.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kiln_shapes import checkpoint, flux_models
from kiln_shapes.flux_tokenizer import MAX_SEQUENCE_LENGTH, build_t5_tokenizer
from kiln_shapes.tokenizer import build_tokenizer
from kiln_shapes.train import (cached_latents, ema_decay_at, load_vae, log_progress, lr_at, make_dataset, optimise,
                               set_lr, tokenize, update_ema)
from worker.pipelines.flow import latent_image_ids, pack_latents, text_ids

logger = logging.getLogger(__name__)
FLUX_PHASE_SEED = 3  # kiln_shapes.train uses 1 (VAE) and 2 (UNet)
CHECKPOINTED = ("transformer", "clip", "t5", "ema_transformer", "ema_clip", "ema_t5", "optimizer")


@dataclass
class FluxTrainConfig:
    """Defaults: the run that made `models/kiln-shapes-flux` on one thread of a 2-core CPU."""

    out_dir: str = "models/kiln-shapes-flux"
    work_dir: str = "/tmp/kiln-shapes-flux-train"
    vae_from: str = "models/kiln-shapes"  # the Diffusers-layout folder whose `vae` encodes the scenes
    preset: str = "small"
    seed: int = 0
    n_images: int = 10000
    steps: int = 2400
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    cfg_dropout: float = 0.1
    ema_decay: float = 0.998
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    checkpoint_every: int = 100
    snapshot_every: int = 0  # export the EMA weights to work_dir/step-N every N steps (0: never)
    device: str = "cpu"
    threads: int = 1


def step_generator(cfg: FluxTrainConfig, step: int) -> torch.Generator:
    """The CPU generator of every random draw at `step`."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + FLUX_PHASE_SEED * 100_003 + step)


def latent_normalisation(latents: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(shift_factor, scaling_factor): the mean of the posterior means, and 1 / their std after the shift."""
    shift = float(latents["mean"].mean())
    return shift, 1.0 / float((latents["mean"] - shift).std())


# ---------------------------------------------------------------------------------------- step
def sample_batch(cfg: FluxTrainConfig, state: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Normalised latents sampled from the stored posteriors, and their captions' ids (10 % emptied)."""
    latents = state["latents"]
    idx = torch.randint(0, len(state["clip_ids"]), (cfg.batch,), generator=gen)
    eps = torch.randn(latents["mean"][idx].shape, generator=gen)
    z0 = (latents["mean"][idx] + latents["std"][idx] * eps - state["shift"]) * state["scale"]
    drop = (torch.rand(cfg.batch, generator=gen) < cfg.cfg_dropout)[:, None]
    return {"z0": z0.to(cfg.device),
            "clip_ids": torch.where(drop, state["empty_clip"], state["clip_ids"][idx]).to(cfg.device),
            "t5_ids": torch.where(drop, state["empty_t5"], state["t5_ids"][idx]).to(cfg.device)}


def velocity(state: dict[str, Any], prefix: str, noisy: torch.Tensor, sigma: torch.Tensor,
             clip_ids: torch.Tensor, t5_ids: torch.Tensor) -> torch.Tensor:
    """The transformer's packed velocity (B, 64, 16) for spatial latents (B, 4, 16, 16) at `sigma` (B,)."""
    h, w = noisy.shape[-2:]
    states = state[prefix + "t5"](input_ids=t5_ids).last_hidden_state  # (B, L, d_model), no mask (as FLUX)
    pooled = state[prefix + "clip"](clip_ids).pooler_output  # (B, hidden)
    return state[prefix + "transformer"](
        hidden_states=pack_latents(noisy), encoder_hidden_states=states, pooled_projections=pooled, timestep=sigma,
        img_ids=latent_image_ids(h, w, noisy.device), txt_ids=text_ids(t5_ids.shape[1], noisy.device),
    ).sample


def flow_loss(cfg: FluxTrainConfig, state: dict[str, Any], batch: dict[str, torch.Tensor],
              gen: torch.Generator) -> torch.Tensor:
    """MSE between the predicted and true velocity ε − x_0 at x_σ = (1 − σ)·x_0 + σ·ε."""
    z0 = batch["z0"]
    noise = torch.randn(z0.shape, generator=gen).to(cfg.device)
    sigma = flux_models.shifted_sigmas(torch.randn(z0.shape[0], generator=gen)).to(cfg.device)
    s = sigma.view(-1, 1, 1, 1)
    pred = velocity(state, "", (1.0 - s) * z0 + s * noise, sigma, batch["clip_ids"], batch["t5_ids"])
    return (pred - pack_latents(noise - z0)).pow(2).mean()


def train_flux(cfg: FluxTrainConfig, state: dict[str, Any]) -> None:
    names = ("transformer", "clip", "t5")
    params = [p for name in names for p in state[name].parameters()]
    for name in names:
        state[name].train()
    started = time.monotonic()
    while state["step"] < cfg.steps:
        step = state["step"]
        gen = step_generator(cfg, step)
        set_lr(state["optimizer"], lr_at(step, cfg.lr, cfg.warmup, cfg.steps))
        loss = flow_loss(cfg, state, sample_batch(cfg, state, gen), gen)
        optimise(state["optimizer"], loss, params)
        decay = ema_decay_at(step, cfg.ema_decay)
        for name in names:
            update_ema(state["ema_" + name], state[name], decay)
        state["step"] = step + 1
        log_progress("flux", step + 1, cfg.steps, loss.item(), started)
        maybe_checkpoint(cfg, state)
        if cfg.snapshot_every and state["step"] % cfg.snapshot_every == 0 and state["step"] < cfg.steps:
            export(cfg, state, Path(cfg.work_dir) / f"step-{state['step']}")


# ---------------------------------------------------------------------------------------- state
def initial_state(cfg: FluxTrainConfig, clip_tokenizer: Any, t5_tokenizer: Any) -> dict[str, Any]:
    """Fresh (seeded) encoders, transformer, their EMA copies and the optimizer, on `cfg.device`."""
    torch.manual_seed(cfg.seed)
    clip = flux_models.build_clip_encoder(cfg.preset, len(clip_tokenizer)).to(cfg.device)
    t5 = flux_models.build_t5_encoder(cfg.preset, len(t5_tokenizer)).to(cfg.device)
    transformer = flux_models.build_transformer(cfg.preset, t5.config.d_model, clip.config.hidden_size).to(cfg.device)
    state: dict[str, Any] = {"step": 0, "transformer": transformer, "clip": clip, "t5": t5}
    for name in ("transformer", "clip", "t5"):
        state["ema_" + name] = copy.deepcopy(state[name]).requires_grad_(False).eval()
    params = [*transformer.parameters(), *clip.parameters(), *t5.parameters()]
    state["optimizer"] = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    return state


def maybe_checkpoint(cfg: FluxTrainConfig, state: dict[str, Any], force: bool = False) -> None:
    """Write `checkpoint.pt` atomically every `checkpoint_every` steps (or when forced)."""
    if force or not state["step"] % cfg.checkpoint_every:
        checkpoint.save(cfg.work_dir, state, CHECKPOINTED, step=state["step"], config=asdict(cfg))


def resume(cfg: FluxTrainConfig, state: dict[str, Any]) -> None:
    """Load `checkpoint.pt` from `cfg.work_dir` into `state`, if there is one."""
    if payload := checkpoint.load(cfg.work_dir, state, CHECKPOINTED, cfg.device):
        state["step"] = payload["step"]


def prepare(cfg: FluxTrainConfig) -> dict[str, Any]:
    """Tokenizers, models (resumed if a checkpoint exists), the VAE and its cached latents, caption ids."""
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    clip_tokenizer = build_tokenizer(Path(cfg.work_dir) / "tokenizer")
    t5_tokenizer = build_t5_tokenizer(cfg.max_sequence_length)
    state = initial_state(cfg, clip_tokenizer, t5_tokenizer)
    resume(cfg, state)
    state.update(vae=load_vae(cfg.vae_from).to(cfg.device).eval(), clip_tokenizer=clip_tokenizer,
                 t5_tokenizer=t5_tokenizer)
    dataset = make_dataset(cfg)
    state["latents"] = cached_latents(cfg, state["vae"], dataset["images"])
    state["shift"], state["scale"] = latent_normalisation(state["latents"])
    logger.info("%d training images; latents shift %.4f scale %.4f", len(dataset["captions"]), state["shift"],
                state["scale"])
    state["clip_ids"] = tokenize(clip_tokenizer, dataset["captions"])
    state["empty_clip"] = tokenize(clip_tokenizer, [""])[0]
    state["t5_ids"] = t5_ids(t5_tokenizer, dataset["captions"], cfg.max_sequence_length)
    state["empty_t5"] = t5_ids(t5_tokenizer, [""], cfg.max_sequence_length)[0]
    return state


def t5_ids(tokenizer: Any, captions: list[str], length: int) -> torch.Tensor:
    """(N, length) T5 ids, `</s>` then `<pad>` to the fixed length (as the pipelines pad)."""
    return tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids


# ---------------------------------------------------------------------------------------- export
def export(cfg: FluxTrainConfig, state: dict[str, Any], out_dir: str | Path, weights: str = "ema") -> Path:
    """Save a FLUX pipeline (fp16 files) in `out_dir`; `weights` "ema" (the moving average) or "raw"."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    from worker.models import AutoencoderKL
    from worker.pipelines import FluxPipeline
    from worker.schedulers import FlowMatchEulerDiscreteScheduler

    prefix = "ema_" if weights == "ema" else ""
    vae = AutoencoderKL.from_config(dict(state["vae"].config), shift_factor=state["shift"],
                                    scaling_factor=state["scale"])
    vae.load_state_dict({k: v.cpu() for k, v in state["vae"].state_dict().items()})
    half = {name: copy.deepcopy(state[prefix + name]).cpu().half().eval() for name in ("transformer", "clip", "t5")}
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(flux_models.scheduler_config()), vae=vae.half(),
        text_encoder=half["clip"], tokenizer=state["clip_tokenizer"], text_encoder_2=half["t5"],
        tokenizer_2=state["t5_tokenizer"], transformer=half["transformer"],
    )
    folder = Path(pipe.save_pretrained(str(out_dir)))
    logger.info("saved kiln-shapes-flux pipeline (%s weights, step %d) to %s", weights, state["step"], folder)
    return folder


def export_checkpoint(cfg: FluxTrainConfig, weights: str = "ema") -> Path:
    """Export the pipeline from `work_dir/checkpoint.pt` as it stands (e.g. to stop a run early)."""
    return export(cfg, prepare(cfg), cfg.out_dir, weights)


def run(cfg: FluxTrainConfig) -> Path:
    """Train (resuming where a checkpoint left off) and export the pipeline to `cfg.out_dir`."""
    torch.set_num_threads(cfg.threads)
    state = prepare(cfg)
    logger.info("config %s", asdict(cfg))
    train_flux(cfg, state)
    maybe_checkpoint(cfg, state, force=True)
    return export(cfg, state, cfg.out_dir)
