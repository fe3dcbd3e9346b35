"""DropletVideoJoinSegments: the video so far + a continuing segment, without the repeated frames."""

from ..droplet_core.continuation import join
from ..droplet_core.drift import channel_stats
from .extend import OVERLAP_INPUT


class DropletVideoJoinSegments:
    DESCRIPTION = ("Appends a segment made by DropletVideo Extend to the video it continues. The segment's first "
                   "`overlap` frames repeat the previous video's last ones: the previous copy is kept, so the length "
                   "is previous + segment - overlap. drift_control anchors the segment's colour and contrast to the "
                   "reference (faded in after the seam, so the seam is untouched).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The joined video, for the next Extend or Create Video.",)
    FUNCTION = "join"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "previous": ("IMAGE", {"tooltip": "The video the segment continues (the frames its Extend got)."}),
                "segment": ("IMAGE", {"tooltip": "The new segment's frames (VAE Decode with trim_to_frames on)."}),
                "overlap": OVERLAP_INPUT,
                "drift_control": ("BOOLEAN", {"default": True, "tooltip": "Match the segment's per-channel mean "
                                              "and contrast to the reference, faded in over 12 frames after the "
                                              "seam. Turn off when a segment is meant to change the lighting."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "The look to keep (the first segment's frames, or the start "
                                        "image). Unconnected: the previous video."}),
            },
        }

    def join(self, previous, segment, overlap, drift_control, reference=None):
        anchor_to = channel_stats(previous if reference is None else reference) if drift_control else None
        return (join(previous, segment, overlap, anchor_to),)
