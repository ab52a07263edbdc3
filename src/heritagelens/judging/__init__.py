"""Whether class images look like their class: the panel of judges, what they score, and the image statistics."""
