"""DropletVideoResolutionBucket: a video size with the image's aspect ratio at a pixel budget."""

from ..droplet_core.shapes import size_for_budget


class DropletVideoResolutionBucket:
    DESCRIPTION = ("Picks the video width and height for an image: its aspect ratio at about base_resolution^2 "
                   "pixels, each side a multiple of 16 (the reference's resolution bucket). Connect the outputs to "
                   "DropletVideoImageEncode's width and height (convert those widgets to inputs).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("INT", "INT")
    RETURN_NAMES = ("width", "height")
    OUTPUT_TOOLTIPS = ("Video width, a multiple of 16.", "Video height, a multiple of 16.")
    FUNCTION = "bucket"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The start image; only its size is used (the first image's)."}),
            "base_resolution": ("INT", {"default": 640, "min": 512, "max": 896, "step": 16, "tooltip": "Side of "
                                        "the square with the same pixel count: 640 gives 848x480 for a 16:9 image."}),
        }}

    def bucket(self, image, base_resolution):
        if image.ndim != 4 or image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"image must be an IMAGE [batch, height, width, channels], got shape "
                             f"{tuple(image.shape)}: connect Load Image or another image node.")
        return size_for_budget(int(image.shape[2]), int(image.shape[1]), base_resolution)
