"""Readers of foreign weight formats the library loads (StyleGAN2 .pkl/.pt, VGG16 .onnx/.pth);
converters/ is the command line around them."""
