"""Small building blocks shared by the models (Keras-only, backend-agnostic)."""
import numpy as np
import keras


@keras.saving.register_keras_serializable(package="segflow")
class BilinearUpsampleInitializer(keras.initializers.Initializer):
    """Conv2DTranspose kernel that starts as bilinear upsampling (FCN, Long et al.).

    Each class channel is upsampled from itself only, so an untrained FCN already
    produces smooth, aligned score maps.
    """

    def __call__(self, shape, dtype=None):
        size, _, out_channels, in_channels = shape
        factor = (size + 1) // 2
        centre = factor - 1 if size % 2 == 1 else factor - 0.5
        grid = np.ogrid[:size, :size]
        kernel2d = ((1 - abs(grid[0] - centre) / factor) * (1 - abs(grid[1] - centre) / factor))
        weights = np.zeros(shape, dtype="float32")
        for channel in range(min(out_channels, in_channels)):
            weights[:, :, channel, channel] = kernel2d
        return keras.ops.convert_to_tensor(weights, dtype=dtype or "float32")

    def get_config(self):
        return {}


def conv_block(x, filters, batch_norm, name):
    """Two 3x3 convolutions (the UNet stage); BatchNorm before ReLU when asked."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                                kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def raw_image_input(input_shape, scale=1 / 255.0, offset=0.0, name="image"):
    """uint8 pixels in, floats out: exported models serve raw images."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name=name)
    x = keras.layers.Rescaling(scale, offset, name="rescale")(inputs)
    return inputs, x


def logits_head(x, num_classes, name="logits", upsample=1):
    """1x1 conv to class logits, computed in float32 under mixed precision (stable losses);
    `upsample` > 1: then bilinear upsampling by that factor, in float32 too."""
    channels = 1 if num_classes == 2 else num_classes
    x = keras.layers.Conv2D(channels, 1, name=f"{name}_conv")(x)
    if upsample > 1:
        x = keras.layers.UpSampling2D(upsample, interpolation="bilinear", dtype="float32",
                                      name=f"{name}_upsample")(x)
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)


def all_layers(model):
    """Every layer of `model`, those of nested models (an encoder) included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


def synchronize_batch_norm(model, synchronized=True):
    """Switches every BatchNorm of `model` to statistics over the global batch, all replicas
    together (TensorFlow backend; read when a training step is traced). Returns how many."""
    found = [layer for layer in all_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in found:
        layer.synchronized = synchronized
    return len(found)


def check_input_size(input_shape, multiple, model_name):
    """A side of None (any size) is the caller's to check, frame by frame."""
    height, width = input_shape[0], input_shape[1]
    for side, value in (("height", height), ("width", width)):
        if value is not None and value % multiple:
            low = max(multiple, (value or 0) // multiple * multiple)
            raise ValueError(
                f"--image_size: {model_name} needs {side} to be a multiple of {multiple}, got "
                f"{value}; nearest valid sizes: {low} or {low + multiple}")
