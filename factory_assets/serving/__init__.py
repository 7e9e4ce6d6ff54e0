"""The online recommendation service (``factory serve``): see :mod:`factory_assets.serving.app`.

Names are imported lazily so that ``factory --help`` does not load FastAPI.
"""

__all__ = ["ItemFilter", "LoadedModel", "ModelHolder", "ModelLoadError", "ServiceConfig", "create_app", "load_alias", "serve"]


def __getattr__(name):
    if name in ("ServiceConfig", "create_app", "serve"):
        from factory_assets.serving import app

        return getattr(app, name)
    if name in __all__:
        from factory_assets.serving import scorer as models

        return getattr(models, name)
    raise AttributeError(name)
