"""What the network has learned, shown: the deconvnet (Zeiler & Fergus), the attribution methods beside it, and
the figure-2 views (top 9, one image, evolution)."""
