"""Models: ResNet18/50 tumour classifiers (`classifier`) and the Class-Seg ResUNet segmenter (`resunet`)."""
from classeg.models.classifier import (
    ARCHS,
    HEADS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    STRATEGIES,
    ClassifierNet,
    WeightsUnavailableError,
    build_classifier,
    classifier_from_description,
    load_classifier_state,
    parameter_groups,
    read_state_dict,
)
from classeg.models.resunet import ResUNet, build_resunet, resunet_from_description

__all__ = [
    "ARCHS",
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STRATEGIES",
    "ClassifierNet",
    "ResUNet",
    "WeightsUnavailableError",
    "build_classifier",
    "build_resunet",
    "classifier_from_description",
    "load_classifier_state",
    "parameter_groups",
    "read_state_dict",
    "resunet_from_description",
]
