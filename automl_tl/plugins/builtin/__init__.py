"""The built-in plugins (EfficientNet-Lite, torchvision and timm backbones, the four case
strategies), listed once in plugins.manager.BUILTIN_PLUGINS and registered through the same
hooks as third-party ones."""
