"""UNet on a keras.applications encoder (ResNet50, MobileNetV2, EfficientNetB0).

The encoder is the application network without its top, its own input preprocessing
inside the model (inputs stay uint8, so exported models take raw pixels), gray inputs
repeated to 3 channels for its RGB stem. Skips are taken at strides 2, 4, 8 and 16 by
layer name, the bottom at stride 32; the decoder upsamples x2 five times (concatenating
each skip) with two 3x3 convolutions per stage, `base_filters` wide at full resolution
and twice as wide per stage below, as the segmentation_models UNet does with 16.

Weights: "imagenet" goes through Keras's own download and cache (keras.utils.get_file:
an offline machine works with the file placed in $KERAS_HOME/models/, ~/.keras/models by
default); a path loads a local .h5 of the no-top network; None (the default) starts from
random weights.
"""
import os

import keras

from segmodels import layers

# name -> (application, preprocessing mode, skip layers at strides 2, 4, 8, 16, bottom layer)
ENCODERS = {
    "resnet50": (keras.applications.ResNet50, "caffe",
                 ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
                 "conv5_block3_out"),
    "mobilenetv2": (keras.applications.MobileNetV2, "tf",
                    ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                     "block_13_expand_relu"), "out_relu"),
    # EfficientNet's rescaling and normalisation are layers of the application itself
    "efficientnetb0": (keras.applications.EfficientNetB0, "none",
                       ("block2a_expand_activation", "block3a_expand_activation",
                        "block4a_expand_activation", "block6a_expand_activation"),
                       "top_activation"),
}

@keras.saving.register_keras_serializable(package="segflow")
class EncoderPreprocess(keras.layers.Layer):
    """uint8 pixels -> what a keras.applications encoder expects, inside the model.

    mode "caffe": RGB -> BGR, minus the ImageNet channel means (ResNet50); "tf": scaled to
    [-1, 1] (MobileNetV2); "none": float pixels 0..255 (EfficientNet normalises itself).
    One channel is repeated to three first: the pretrained stems read RGB. `scale` and
    `offset` (per channel, optional): pixels * scale + offset after the mode.
    """

    MEANS_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode, scale=None, offset=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "none"):
            raise ValueError(f"EncoderPreprocess mode {mode!r}: expected caffe, tf or none")
        self.mode = mode
        self.scale = None if scale is None else [float(v) for v in scale]
        self.offset = None if offset is None else [float(v) for v in offset]

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if x.shape[-1] == 1:
            x = keras.ops.concatenate([x, x, x], axis=-1)
        if self.mode == "caffe":
            x = keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(self.MEANS_BGR,
                                                                       self.compute_dtype)
        elif self.mode == "tf":
            x = x / 127.5 - 1.0
        if self.scale is not None:
            x = (x * keras.ops.convert_to_tensor(self.scale, self.compute_dtype)
                 + keras.ops.convert_to_tensor(self.offset, self.compute_dtype))
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "scale": self.scale,
                "offset": self.offset}


def _application(name, input_shape, weights):
    builder = ENCODERS[name][0]
    if weights == "imagenet":
        try:
            return builder(include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as err:  # noqa: BLE001  a failed download raises many kinds
            home = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))
            raise ValueError(
                f"--encoder_weights=imagenet: Keras could not load or download the {name} "
                f"ImageNet weights ({type(err).__name__}: {err}). On an offline machine place "
                f"the no-top .h5 file Keras downloads in {home}/models/, or pass "
                "--encoder_weights=/path/to/file.h5")
    base = builder(include_top=False, weights=None, input_shape=input_shape)
    if weights:
        if not os.path.isfile(weights):
            raise ValueError(f"--encoder_weights={weights}: no such file")
        try:
            base.load_weights(weights)
        except Exception as err:  # noqa: BLE001  h5 loaders raise many kinds
            raise ValueError(f"--encoder_weights={weights}: not the no-top {name} weights "
                             f"({type(err).__name__}: {err})")
    return base


# keras.applications.efficientnet's ImageNet standard deviations: with weights="imagenet" it
# follows its Normalization layer with a rescale by 1 / sqrt(std) per channel
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def efficientnet_file_affine(encoder):
    """(scale, offset) that give an EfficientNet built from a weights file the input map of
    the one Keras builds for weights="imagenet".

    Keras adds that network's last input rescale c = 1 / sqrt(std) only when weights ==
    "imagenet", so a model loading the same no-top file from a path sees inputs ~2x off
    scale. Its Normalization computes (x / 255 - mean) / sqrt(var); c times that equals the
    same Normalization of c * x + 255 * mean * (1 - c), an affine map of the pixels before
    the network, with `mean` the file's own. The file's weights then load unchanged.
    """
    normalization = next(layer for layer in encoder.layers
                         if isinstance(layer, keras.layers.Normalization))
    mean = keras.ops.convert_to_numpy(normalization.mean).reshape(-1)
    scale = [1.0 / std ** 0.5 for std in IMAGENET_STDDEV_RGB]
    return scale, [255.0 * m * (1.0 - c) for m, c in zip(mean, scale)]


STRIDES = (2, 4, 8, 16, 32)
SIZE_MULTIPLE = STRIDES[-1]  # the encoder UNet's input sides


def build_encoder(name, input_shape, weights=None, strides=STRIDES):
    """The encoder as one layer: (H, W, 3) preprocessed pixels -> its features at `strides`
    (of 2, 4, 8, 16 and 32: the skips, then the bottom). Named "encoder", so it can be
    frozen as one; layers past the last stride asked for are left out."""
    if name not in ENCODERS:
        raise ValueError(f"--encoder={name!r}: expected one of {sorted(ENCODERS)} or none")
    base = _application(name, tuple(input_shape[:2]) + (3,), weights)
    _, _, skips, bottom = ENCODERS[name]
    by_stride = dict(zip(STRIDES, skips + (bottom,)))
    outputs = [base.get_layer(by_stride[stride]).output for stride in strides]
    return keras.Model(base.input, outputs, name="encoder")


def encoder_features(name, input_shape, weights=None, strides=STRIDES):
    """A uint8 image input and the encoder's features at `strides`, its preprocessing inside
    the model: (inputs, [features])."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    network = build_encoder(name, input_shape, weights, strides)
    scale = offset = None
    if name == "efficientnetb0" and weights and weights != "imagenet":
        scale, offset = efficientnet_file_affine(network)
    x = EncoderPreprocess(ENCODERS[name][1], scale, offset, name="preprocess")(inputs)
    features = network(x)
    return inputs, list(features) if isinstance(features, (list, tuple)) else [features]


def build_encoder_unet(input_shape, num_classes, encoder, encoder_weights=None,
                       base_filters=16, batch_norm=True):
    layers.check_input_size(input_shape, SIZE_MULTIPLE, f"unet with --encoder={encoder}")
    inputs, (*skips, x) = encoder_features(encoder, input_shape, encoder_weights)
    for level in reversed(range(5)):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_upsample")(x)
        if level > 0:  # strides 16, 8, 4, 2 have a skip; full resolution has none
            x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level - 1]])
        x = layers.conv_block(x, base_filters * 2 ** level, batch_norm, f"up{level}")
    return keras.Model(inputs, layers.logits_head(x, num_classes), name=f"unet_{encoder}")
