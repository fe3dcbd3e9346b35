"""Where the engine's weights live while it runs (the CLI's --offload; in ComfyUI, ComfyUI places
the native MODEL itself):

- plan.py: picks a mode from free VRAM and the video size (the memory estimates, from the trace);
- placement.py: runs the chosen mode around each pipeline stage;
- block_swap.py: streams transformer blocks to the device one block ahead;
- sequential.py: every layer visits the device only for its own forward;
- parked_tensors.py: the offload-device copies both of them keep.
"""
