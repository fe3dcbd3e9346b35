"""Frame interpolation model files for the tests and the frontend runs: core's own model classes
(ComfyUI 0.33, comfy_extras/frame_interpolation_models) with seeded random weights, saved as the
safetensors core's Load Frame Interpolation Model reads. Needs a real ComfyUI on sys.path.

    python tests/interp_files.py ComfyUI/models/frame_interpolation/film_net_fp16.safetensors [--rife]
"""

import argparse
import importlib

import torch
from safetensors.torch import save_file

SMALL_RIFE = (16, 16, 16, 16, 16)  # RIFE's block widths (the release's: 192, 128, 96, 64, 32); core reads them


def random_state(model: torch.nn.Module, seed: int, dtype: torch.dtype) -> dict:
    """Every parameter drawn from a seeded generator: weights ~ N(0, 1/fan_in), RIFE's ResConv beta 1,
    biases 0 (core builds the layers uninitialised)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if value.ndim > 1:
            value = torch.randn(value.shape, generator=generator) / value[0].numel() ** 0.5
        else:
            value = torch.full(value.shape, 1.0 if name.endswith("beta") else 0.0)
        state[name] = value.to(dtype).contiguous()
    return state


def write_random_rife(path, channels=SMALL_RIFE, seed=0, dtype=torch.float32) -> None:
    ifnet = importlib.import_module("comfy_extras.frame_interpolation_models.ifnet")
    save_file(random_state(ifnet.IFNet(head_ch=4, channels=channels), seed, dtype), str(path))


def write_random_film(path, seed=0, dtype=torch.float16) -> None:
    """The full FILM architecture (34 M parameters), as film_net_fp16.safetensors holds it."""
    film = importlib.import_module("comfy_extras.frame_interpolation_models.film_net")
    save_file(random_state(film.FILMNet(), seed, dtype), str(path))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--rife", action="store_true", help="a small RIFE instead of FILM")
    args = parser.parse_args()
    (write_random_rife if args.rife else write_random_film)(args.out)
