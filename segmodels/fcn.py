"""FCN-32s/16s/8s on a VGG16 backbone (Long, Shelhamer, Darrell 2015).

fc6/fc7 become 7x7 and 1x1 convolutions, class scores are upsampled by learned
transposed convolutions initialised as bilinear upsampling, and 16s/8s fuse
scores from pool4 (and pool3) first. Nothing is downloaded: ImageNet weights
come from a file given by `backbone_weights`.
"""
import os

import keras

from segmodels import layers

VGG_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))  # (convs, width multiple of base)
SIZE_MULTIPLE = 32  # input sides: five 2x poolings
# ImageNet VGG16 expects mean-subtracted 0..255 pixels (the "caffe" preprocessing).
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)


# He init, as in UNet: with Keras' default (Glorot) a 15-conv ReLU stack trained from scratch
# shrinks its signal by about 2x per layer and barely learns (seen in the tiny-model harness).
RELU_INIT = "he_normal"


def _vgg16(x, width):
    """Layer names match keras.applications.VGG16 so its weights can be copied by name."""
    pools = []
    for block, (convs, multiple) in enumerate(VGG_BLOCKS, start=1):
        for i in range(1, convs + 1):
            x = keras.layers.Conv2D(width * multiple, 3, padding="same", activation="relu",
                                    kernel_initializer=RELU_INIT, name=f"block{block}_conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        pools.append(x)
    return pools  # strides 2, 4, 8, 16, 32


def _load_imagenet(model, path):
    if path == "imagenet":
        raise ValueError(
            "--backbone_weights=imagenet: SegFlow never downloads weights. Download "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (the keras.applications VGG16 "
            "no-top file) once and pass its path: --backbone_weights=/path/to/file.h5")
    if not os.path.isfile(path):
        raise ValueError(f"--backbone_weights={path}: no such file")
    reference = keras.applications.VGG16(include_top=False, weights=path,
                                         input_shape=model.input_shape[1:3] + (3,))
    for layer in reference.layers:
        if layer.name.startswith("block") and layer.weights:
            weights = layer.get_weights()
            if layer.name == "block1_conv1":
                weights[0] = weights[0][:, :, ::-1, :]  # the file's kernels read BGR; ours RGB
            model.get_layer(layer.name).set_weights(weights)


def _up(x, num_classes, factor, name):
    return keras.layers.Conv2DTranspose(
        num_classes, 2 * factor, strides=factor, padding="same", use_bias=False,
        kernel_initializer=layers.BilinearUpsampleInitializer(), name=name)(x)


def build_fcn(input_shape, num_classes, variant="8s", width=64, fc_filters=4096, dropout=0.5,
              backbone_weights=None):
    layers.check_input_size(input_shape, SIZE_MULTIPLE, f"fcn{variant}")
    if backbone_weights:
        if width != 64 or input_shape[-1] != 3:
            raise ValueError("--backbone_weights needs width=64 and 3-channel input")
        mean = IMAGENET_MEAN_RGB
        inputs, x = layers.raw_image_input(input_shape, scale=1.0,
                                           offset=[-m for m in mean])
    else:
        inputs, x = layers.raw_image_input(input_shape)
    _, _, pool3, pool4, pool5 = _vgg16(x, width)
    classes = 1 if num_classes == 2 else num_classes
    x = keras.layers.Conv2D(fc_filters, 7, padding="same", activation="relu",
                            kernel_initializer=RELU_INIT, name="fc6")(pool5)
    x = keras.layers.Dropout(dropout, name="fc6_dropout")(x)
    x = keras.layers.Conv2D(fc_filters, 1, activation="relu", kernel_initializer=RELU_INIT,
                            name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="fc7_dropout")(x)
    score = keras.layers.Conv2D(classes, 1, name="score_fr")(x)
    if variant == "32s":
        score = _up(score, classes, 32, "upscore32")
    else:
        # skip scores start at zero (as in the paper), so training starts from FCN-32s
        score = keras.layers.Add(name="fuse_pool4")([
            _up(score, classes, 2, "upscore2"),
            keras.layers.Conv2D(classes, 1, kernel_initializer="zeros", name="score_pool4")(pool4)])
        if variant == "16s":
            score = _up(score, classes, 16, "upscore16")
        else:
            score = keras.layers.Add(name="fuse_pool3")([
                _up(score, classes, 2, "upscore_pool4"),
                keras.layers.Conv2D(classes, 1, kernel_initializer="zeros",
                                    name="score_pool3")(pool3)])
            score = _up(score, classes, 8, "upscore8")
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(score)
    model = keras.Model(inputs, logits, name=f"fcn{variant}")
    if backbone_weights:
        _load_imagenet(model, backbone_weights)
    return model


def build_fcn32s(input_shape, num_classes, **options):
    return build_fcn(input_shape, num_classes, variant="32s", **options)


def build_fcn16s(input_shape, num_classes, **options):
    return build_fcn(input_shape, num_classes, variant="16s", **options)


def build_fcn8s(input_shape, num_classes, **options):
    return build_fcn(input_shape, num_classes, variant="8s", **options)
