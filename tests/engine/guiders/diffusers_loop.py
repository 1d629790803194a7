"""A reference text-to-image run on a tiny pipeline whose every step is guided by one of diffusers' guider objects:
the same UNet, DDIM scheduler, seed and decode as StableDiffusionPipeline, with `guider.forward` in place of CFG."""

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from engine.models.schedulers import make_scheduler


@torch.no_grad()
def guided_run(folder, prompt: str, steps: int, seed: int, guider) -> Image.Image:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    scheduler = make_scheduler("ddim", pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, None)  # (1, T, D) each
    generator = torch.Generator("cpu").manual_seed(seed)
    unet = pipe.unet
    shape = (1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = randn_tensor(shape, generator=generator, dtype=cond.dtype) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)  # (2, C, h, w): uncond first
        eps_uncond, eps_cond = unet(x_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        guider.set_state(i, steps, t)
        eps = guider.forward(eps_cond, eps_uncond).pred
        latents = scheduler.step(eps, t, latents, eta=0.0, generator=generator, return_dict=False)[0]
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")[0]
