"""Stand-in for comfy.weight_adapter.base.WeightAdapterBase."""


class WeightAdapterBase:
    name: str
    loaded_keys: set
    weights: tuple

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=None, original_weight=None):
        raise NotImplementedError
