"""Builds what nodes boot: the stage-one initramfs, the PXE/TFTP tree, the UKI payload."""
