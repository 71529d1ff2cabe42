"""Generators and discriminators: plain ``nn.Module`` classes, fully convolutional, ONNX-exportable."""

from training.networks.common import NORMS, check_size, count_parameters, init_weights, norm_layer
from training.networks.patchgan import PatchDiscriminator
from training.networks.resnet import ResnetGenerator
from training.networks.unet import UnetGenerator

__all__ = [
    "NORMS",
    "PatchDiscriminator",
    "ResnetGenerator",
    "UnetGenerator",
    "check_size",
    "count_parameters",
    "init_weights",
    "norm_layer",
]
