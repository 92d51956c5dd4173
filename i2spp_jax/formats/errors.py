"""What a reader of a generator file raises when the file cannot be converted (each message names
the cause), and the list of the files it reads, for messages about a file of another kind."""


class ConversionError(ValueError):
    """A source file that cannot be converted; the message names the cause."""


class UnknownFormatError(ConversionError):
    """A readable file that holds no generator of a format the readers know."""


FORMATS = ("the converter reads a stylegan2-ada-pytorch network pickle (.pkl) or state dict (.pt/.pth/.npz), a "
           "rosinality/stylegan2-pytorch checkpoint (.pt), or an official TensorFlow StyleGAN or StyleGAN2 pickle "
           "(.pkl)")
