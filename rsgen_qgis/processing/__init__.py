"""Processing provider "rsgen" and its algorithms (toolbox, Graphical Modeler, batch mode, qgis_process)."""
