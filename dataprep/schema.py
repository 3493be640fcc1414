"""The dataset's fixed facts: label ids (dair-ai/emotion ClassLabel order) and split names."""

LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
LABEL_IDS = {name: i for i, name in enumerate(LABELS)}
SPLITS = ("train", "validation", "test")
# processed file stem per split (data/processed/{train,val,test}.parquet)
PROCESSED_NAME = {"train": "train", "validation": "val", "test": "test"}
