"""A plug-in module that fails as it loads (model.arch=plugin_fixtures_broken:build)."""

raise RuntimeError("this plug-in fails as it loads")
