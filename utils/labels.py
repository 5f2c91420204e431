"""Class names and label orders of every supported dataset, as code.

Labels everywhere in this repository are indices into the **sorted** class-folder names
(torchvision ImageFolder convention). Every dataset that ships its own integer codes is mapped
onto that order here, so that per-class settings (focal alphas, VAD sign tables) line up.

- RAF-DB: anger disgust fear happy neutral sad surprise; list-file codes 1..7 = Surprise Fear Disgust
  Happiness Sadness Anger Neutral.
- FER2013: the same 7 classes; ``emotion`` 0..6 = Angry Disgust Fear Happy Sad Surprise Neutral.
- FERPlus: anger contempt disgust fear happy neutral sad surprise (7 without contempt); vote columns
  neutral happiness surprise sadness anger disgust fear contempt.
- AffectNet: the same 8 (or 7) classes; ``expression`` 0..7 = Neutral Happy Sad Surprise Fear Disgust Anger
  Contempt.
"""

CLASSES_7 = ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
CLASSES_8 = ["anger", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]

# RAF-DB basic, EmoLabel/list_patition_label.txt: official label -> class name.
RAFDB_CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "anger", 7: "neutral"}
# FER2013 `emotion` column -> class name.
FER2013_CODES = {0: "anger", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
# FERPlus fer2013new.csv vote columns (in file order) -> class name; `unknown` and `NF` are dropped.
FERPLUS_COLUMNS = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "contempt": "contempt",
}
FERPLUS_DROPPED_COLUMNS = ["unknown", "NF"]
# AffectNet `expression` code -> class name; 8 (none), 9 (uncertain), 10 (no face) are dropped.
AFFECTNET_CODES = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
    7: "contempt",
}

# Focal-loss alphas of the paper for RAF-DB, in CLASSES_7 order.
RAFDB_FOCAL_ALPHA = [0.7, 0.8, 0.9, 0.2, 0.4, 0.4, 0.6]

# The data formats the stages read (``--dataset``).
DATASETS = ("folder", "rafdb", "fer2013", "ferplus", "affectnet")

# Valence / Arousal / Dominance: the names used in logs and outputs, and the FER2013-VAD CSV columns.
VAD_NAMES = ("valence", "arousal", "dominance")
VAD_COLUMNS = ("Valence", "Arousal", "Dominance")

# Expected (Valence, Arousal, Dominance) signs per canonical class name (docs/method.md, "Multi-task
# category + VAD"): "+" positive, "-" negative, "0" near zero, "·" free. Contempt (8-class sets) is all free.
VAD_SIGNS = {
    "anger": ("-", "+", "·"),
    "disgust": ("-", "+", "+"),
    "fear": ("-", "·", "-"),
    "happy": ("+", "+", "+"),
    "sad": ("-", "-", "-"),
    "surprise": ("·", "+", "-"),
    "neutral": ("0", "0", "·"),
    "contempt": ("·", "·", "·"),
}
assert set(CLASSES_7) <= set(VAD_SIGNS) and set(CLASSES_8) <= set(VAD_SIGNS)

# Float codes of vad_sign_matrix: +1 "+", -1 "-", 0 "0", NaN "·" (free: no constraint).
SIGN_CODES = {"+": 1.0, "-": -1.0, "0": 0.0, "·": float("nan")}

# Other spellings of the canonical names (FER2013 / RAF-DB / FERPlus source names), case-insensitive.
CLASS_ALIASES = {
    "angry": "anger",
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "disgusted": "disgust",
    "fearful": "fear",
}


def classes_for(num_classes):
    """The canonical class list for 7 or 8 classes."""
    if num_classes == 7:
        return list(CLASSES_7)
    if num_classes == 8:
        return list(CLASSES_8)
    raise ValueError(f"no canonical class list with {num_classes} classes (7 or 8)")


def code_to_label(codes, classes):
    """Turn a {source code: class name} table into {source code: label index} for `classes`.

    Codes whose class is not in `classes` (contempt in a 7-class setting) are left out, so callers
    can drop those samples by checking membership.
    """
    index = {name: i for i, name in enumerate(classes)}
    return {code: index[name] for code, name in codes.items() if name in index}
