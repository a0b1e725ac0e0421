"""Figures: matplotlib figures from results (``plots``) and a run's standard figures (``report``)."""
