"""SD3 LoRA (transformer + both CLIP text encoders, Diffusers layout) against diffusers + peft."""

from __future__ import annotations

from tests.lora.lora_files import TEXT_TARGETS, peft_layers, random_lora
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded

SD3_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "to_add_out", "ff.net.2", "ff_context.net.2")
CALL = dict(prompt="a red cat", num_inference_steps=2, output_type="np", height=32, width=32, max_sequence_length=16)


def test_sd3_lora_matches_diffusers(tmp_path):
    import diffusers

    from tests.pipelines.tiny_flow import save_tiny_sd3
    from worker.pipelines import DiffusionPipeline

    folder = save_tiny_sd3(tmp_path / "sd3")
    ref, pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder), DiffusionPipeline.from_pretrained(folder)
    base = pipe(generator=seeded(0), **CALL).images
    layers = {"transformer_lora_layers": peft_layers(random_lora(ref.transformer, SD3_TARGETS, 2, 1, std=0.3)),
              "text_encoder_lora_layers": peft_layers(random_lora(ref.text_encoder, TEXT_TARGETS, 2, 2)),
              "text_encoder_2_lora_layers": peft_layers(random_lora(ref.text_encoder_2, TEXT_TARGETS, 2, 3))}
    type(ref).save_lora_weights(tmp_path / "lora", **layers)
    for p in (ref, pipe):
        p.load_lora_weights(tmp_path / "lora", adapter_name="s")
    expected = ref(generator=seeded(0), joint_attention_kwargs={"scale": 0.6}, **CALL).images
    got = pipe(generator=seeded(0), joint_attention_kwargs={"scale": 0.6}, **CALL).images
    assert max_diff(got, expected) < MAX_PIXEL_DIFF and max_diff(got, base) > 20 * MAX_PIXEL_DIFF
