"""meshlet_provision: bootable images, first-boot enrollment, QR and serial enrollment (issue 8)."""
