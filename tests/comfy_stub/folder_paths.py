"""Stand-in for ComfyUI's folder_paths: model folders by name, file lists, full paths.

ComfyUI's base path is its checkout; the stand-in's is COMFYUI_STUB_BASE or a fresh temporary
folder, so tests never write into the repository. No file-list cache.
"""

import logging
import os
import tempfile

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = os.environ.get("COMFYUI_STUB_BASE") or tempfile.mkdtemp(prefix="comfy_stub_")
models_dir = os.path.join(base_path, "models")
output_directory = os.path.join(base_path, "output")
temp_directory = os.path.join(base_path, "temp")
input_directory = os.path.join(base_path, "input")

folder_names_and_paths = {
    "checkpoints": ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions),
    "loras": ([os.path.join(models_dir, "loras")], supported_pt_extensions),
    "vae": ([os.path.join(models_dir, "vae")], supported_pt_extensions),
    "text_encoders": ([os.path.join(models_dir, "text_encoders"), os.path.join(models_dir, "clip")],
                      supported_pt_extensions),
    "diffusion_models": ([os.path.join(models_dir, "unet"), os.path.join(models_dir, "diffusion_models")],
                         supported_pt_extensions),
    "diffusers": ([os.path.join(models_dir, "diffusers")], ["folder"]),
}


def map_legacy(folder_name):
    legacy = {"unet": "diffusion_models", "clip": "text_encoders"}
    return legacy.get(folder_name, folder_name)


def get_output_directory():
    return output_directory


def get_temp_directory():
    return temp_directory


def get_input_directory():
    return input_directory


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name):
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def recursive_search(directory, excluded_dir_names=None):
    if not os.path.isdir(directory):
        return [], {}
    excluded_dir_names = excluded_dir_names or []
    result, dirs = [], {directory: os.path.getmtime(directory)}
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d not in excluded_dir_names]
        result.extend(os.path.relpath(os.path.join(dirpath, name), directory) for name in filenames)
        for d in subdirs:
            dirs[os.path.join(dirpath, d)] = os.path.getmtime(os.path.join(dirpath, d))
    return result, dirs


def filter_files_extensions(files, extensions):
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_full_path(folder_name, filename):
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(folder, filename)
        if os.path.isfile(full_path):
            return full_path
        if os.path.islink(full_path):
            logging.warning("WARNING path %s exists but doesn't link anywhere, skipping.", full_path)
    return None


def get_full_path_or_raise(folder_name, filename):
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path


def get_filename_list(folder_name):
    folder_name = map_legacy(folder_name)
    folders, extensions = folder_names_and_paths[folder_name]
    found = set()
    for folder in folders:
        files, _dirs = recursive_search(folder, excluded_dir_names=[".git"])
        found.update(filter_files_extensions(files, extensions))
    return sorted(found)
