"""Node image formats: cpio newc, images built from root trees, per-node overlays."""
