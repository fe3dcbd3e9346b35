"""Stand-in for comfy.lora_convert: no conversion applies to CogVideoX-family LoRAs."""


def convert_lora(sd):
    return sd
