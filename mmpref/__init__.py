"""mmpref: learning from human preferences for images, video and robot control on one shared loss core."""

__version__ = "0.1.0"
