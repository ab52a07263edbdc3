"""The photos: a dataset's folder layout and decode cache, any photo to 64 px RGB pixels, the class-name rule, the
train split as a run sees it (grouped and divided), and fetching the dataset."""
