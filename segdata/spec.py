"""The model's input, decided once per run: what train.py's pipeline builds batches for, what
the model is built for, and what serving maps raw frames to. Saved next to the model (and
inside the SavedModel) as its input contract, and read by every consumer instead of flags
a user must remember.

Training-time randomness (flips, warps, the random scale and foreground centring of
windows) is not part of it: that is augment.AugmentConfig.
"""
import dataclasses
import json
import os

from segdata import atomic, augment, records

FILENAME = "input_contract.json"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    image_size: tuple            # evaluation input (height, width); "scale": the canvas
    resize: str                  # augment.POLICIES
    channels: int                # model input channels (1 or 3)
    num_classes: int
    ignore_label: int = 255
    class_names: tuple = None
    xla: bool = True             # the training pipeline's --aug_xla (serving: always reference)
    data_scale: float = None     # "scale": model pixels per source pixel
    train_crop: tuple = None     # "scale": the training window (height, width)
    intensity: dict = None       # 16-bit frames: the records' rule to uint8 (segdata.intensity)
    prepared_size: tuple = None  # prepare --resize: raw frames are stretched to it first

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        for name in ("train_crop", "prepared_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.resize not in augment.POLICIES:
            raise ValueError(f"input contract: resize={self.resize!r}, expected one of "
                             f"{augment.POLICIES}")
        if self.resize == augment.SCALE and not (self.data_scale or 0) > 0:
            raise ValueError(f"--data_scale={self.data_scale}: must be > 0 (1 = native)")

    @classmethod
    def for_records(cls, records_dir, image_size, resize="stretch", channels=0, xla=True,
                    data_scale=None, train_crop=None):
        """The spec of a model trained on a records folder: its classes, ignore label,
        intensity rule and prepare size from the manifest; `channels=0`: the records'."""
        manifest = records.load_manifest(records_dir)
        return cls(image_size, resize, channels or manifest.get("channels", 3),
                   manifest["num_classes"], manifest["ignore_label"],
                   manifest.get("class_names"), xla, data_scale, train_crop,
                   manifest.get("intensity"), manifest.get("resized_to"))

    @property
    def training_size(self):
        """The training examples' size: the window, or the one input size."""
        return self.train_crop or self.image_size

    def source_canvas(self):
        """"scale": the largest frame (h, w) that fits the canvas whole, in source pixels."""
        return tuple(int(side / self.data_scale) for side in self.image_size)

    @property
    def logit_channels(self):
        return 1 if self.num_classes == 2 else self.num_classes

    def to_json(self):
        values = dataclasses.asdict(self)
        for name in ("image_size", "train_crop", "prepared_size", "class_names"):
            values[name] = list(getattr(self, name)) if getattr(self, name) else None
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))

    def save(self, folder):
        """FILENAME in `folder`, atomically."""
        path = os.path.join(folder, FILENAME)
        with atomic.replacing(path) as handle:
            handle.write(self.to_json())
        return path

    @classmethod
    def load(cls, folder):
        path = os.path.join(folder, FILENAME)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no input contract (runs from before it was written: "
                             "pass --image_size and --resize as trained)")
        with open(path) as handle:
            return cls.from_json(handle.read())

    def check(self, **given):
        """Flag values a user passed must agree with the contract: ValueError naming both."""
        for name, value in given.items():
            if value in (None, "", 0):
                continue
            mine = getattr(self, name)
            if name == "image_size":
                value = tuple(value)
            if value != mine:
                raise ValueError(f"--{name}={value} contradicts the model's input contract "
                                 f"({name}={mine}); drop the flag: the contract is how the "
                                 "model was trained")
