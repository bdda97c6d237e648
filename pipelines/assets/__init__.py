from .rgba import rgba_images, rgba_images_checks

__all__ = ["rgba_images", "rgba_images_checks"]
