"""DeepLabV3+ (Chen et al., ECCV 2018) on a keras.applications encoder.

The encoder (segmodels.encoders: ResNet50, MobileNetV2 or EfficientNetB0, its preprocessing
inside the model, uint8 in) is cut at stride 16. ASPP runs on its stride-16 features: a 1x1
branch, three 3x3 atrous branches at rates 6, 12 and 18, and image-level pooling,
concatenated and projected by a 1x1 convolution. The decoder upsamples that x4, concatenates
the stride-4 features projected to 48 channels, applies two 3x3 convolutions and a 1x1
classifier, and upsamples the logits x4 (bilinear, float32) to the input.

Where it differs from the paper, and why:
- Output stride 16 comes from cutting the encoder after its stride-16 stage (as keras.io's
  DeepLabV3+ example does), not from dilating the last stage. keras.applications builds its
  networks with fixed strides, and MobileNetV2 and EfficientNet pad explicitly before their
  stride-2 convolutions, so a dilated last stage would mean rebuilding each network layer by
  layer. The stride-32 stage and its weights are left out (most of ResNet50's parameters).
  Output stride 8 is left out for the same reason.
- The image-pooling branch has no BatchNorm: its map is 1x1, so with one example per replica
  (common at 1024 px) BatchNorm sees one value per channel, normalises it to its offset, and
  the branch carries nothing while training. It is a biased 1x1 convolution + ReLU instead.
- ASPP and decoder convolutions are plain, not the depthwise-separable ones of the paper's
  Xception variant.
- Built for any input size (train.py --train_crop), the image-pooling map is repeated by a
  broadcast (RepeatOverGrid); at a fixed size (every export) by UpSampling2D, as before.
- keras-hub's DeepLabV3Plus runs its ASPP on stride-32 features (its ResNet has no dilation)
  with the same rates, which there span twice the image distance; here they are the
  paper's rates at the paper's stride.
"""
import keras

from segmodels import encoders, layers

ASPP_RATES = (6, 12, 18)
LOW_LEVEL_FILTERS = 48  # the paper's projection of the stride-4 features
SIZE_MULTIPLE = 16  # input sides: the encoder is cut at stride 16


def _conv_bn_relu(x, filters, kernel, name, dilation=1):
    x = keras.layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation,
                            use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="segflow")
class RepeatOverGrid(keras.layers.Layer):
    """A (B, 1, 1, C) map repeated over the grid of another tensor of any size: the
    image-pooling branch of a model whose input size is not fixed (train.py --train_crop)."""

    def call(self, pooled, grid):
        shape = keras.ops.shape(grid)
        return keras.ops.broadcast_to(pooled, (shape[0], shape[1], shape[2], pooled.shape[-1]))

    def compute_output_shape(self, pooled_shape, grid_shape):
        return tuple(grid_shape[:3]) + (pooled_shape[-1],)


def _aspp(x, filters):
    branches = [_conv_bn_relu(x, filters, 1, "aspp_1x1")]
    branches += [_conv_bn_relu(x, filters, 3, f"aspp_rate{rate}", rate) for rate in ASPP_RATES]
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = keras.layers.Conv2D(filters, 1, activation="relu", kernel_initializer="he_normal",
                                 name="aspp_pool_conv")(pooled)
    # a 1x1 map repeated over the stride-16 grid (what bilinear resizing of one pixel gives);
    # a fixed size keeps the plain UpSampling2D that every export format knows
    if None in x.shape[1:3]:
        pooled = RepeatOverGrid(name="aspp_pool_upsample")(pooled, x)
    else:
        pooled = keras.layers.UpSampling2D(tuple(x.shape[1:3]), name="aspp_pool_upsample")(pooled)
    x = keras.layers.Concatenate(name="aspp_concat")(branches + [pooled])
    return _conv_bn_relu(x, filters, 1, "aspp_project")


def build_deeplabv3plus(input_shape, num_classes, encoder="none", encoder_weights=None,
                        aspp_filters=256):
    """aspp_filters: the width of the ASPP branches and the decoder (256 in the paper)."""
    if encoder == "none":
        raise ValueError(f"--model=deeplabv3plus needs an --encoder: one of "
                         f"{', '.join(sorted(encoders.ENCODERS))}")
    layers.check_input_size(input_shape, SIZE_MULTIPLE, f"deeplabv3plus with --encoder={encoder}")
    inputs, (low_level, x) = encoders.encoder_features(encoder, input_shape, encoder_weights,
                                                       strides=(4, 16))
    x = _aspp(x, aspp_filters)
    x = keras.layers.UpSampling2D(4, interpolation="bilinear", name="decoder_upsample")(x)
    low_level = _conv_bn_relu(low_level, min(LOW_LEVEL_FILTERS, aspp_filters), 1,
                              "decoder_low_level")
    x = keras.layers.Concatenate(name="decoder_concat")([x, low_level])
    x = _conv_bn_relu(x, aspp_filters, 3, "decoder_conv1")
    x = _conv_bn_relu(x, aspp_filters, 3, "decoder_conv2")
    return keras.Model(inputs, layers.logits_head(x, num_classes, upsample=4),
                       name=f"deeplabv3plus_{encoder}")
