"""Generative models of OTA: the VQGAN, its training ("priming") and the upstream pack."""
