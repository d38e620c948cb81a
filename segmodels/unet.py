"""UNet (Ronneberger et al. 2015), as in the well-known zhixuhao/unet Keras model.

depth down stages of two 3x3 convs + 2x2 max-pool, a bottom block with dropout,
depth up stages (upsample, skip concat, two 3x3 convs), 1x1 conv to logits.
"""
import keras

from segmodels import encoders, layers


def build_unet(input_shape, num_classes, base_filters=64, depth=4, batch_norm=False,
               dropout=0.5, encoder="none", encoder_weights=None):
    """Up-convolutions are UpSampling2D + a 2x2 conv, as in the classic model.
    encoder: "none" (the classic UNet) or a segmodels.encoders.ENCODERS name, whose UNet
    takes base_filters and batch_norm for its decoder (depth and dropout are the classic
    UNet's); encoder_weights: None, "imagenet" or the path of a no-top .h5."""
    if encoder != "none":
        return encoders.build_encoder_unet(input_shape, num_classes, encoder,
                                           encoder_weights or None, base_filters, batch_norm)
    layers.check_input_size(input_shape, 2 ** depth, "unet")
    inputs, x = layers.raw_image_input(input_shape)
    skips = []
    for level in range(depth):
        x = layers.conv_block(x, base_filters * 2 ** level, batch_norm, f"down{level}")
        if level == depth - 1 and dropout:
            x = keras.layers.Dropout(dropout, name=f"down{level}_dropout")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = layers.conv_block(x, base_filters * 2 ** depth, batch_norm, "bottom")
    if dropout:
        x = keras.layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = keras.layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = keras.layers.Conv2D(filters, 2, padding="same", activation="relu",
                                kernel_initializer="he_normal", name=f"up{level}_upconv")(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = layers.conv_block(x, filters, batch_norm, f"up{level}")
    return keras.Model(inputs, layers.logits_head(x, num_classes), name="unet")
