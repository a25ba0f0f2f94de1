"""SAERL Studio app: routes to the pages. Run with `streamlit run app.py -- --db PATH`."""

import streamlit as st

from ui.common import page_setup

page_setup()
nav = st.navigation(
    [
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("pages/clusters.py", title="Clusters", icon=":material/bubble_chart:"),
        st.Page("pages/difficulty.py", title="Difficulty", icon=":material/trending_up:"),
        st.Page("pages/quality.py", title="Quality", icon=":material/verified:"),
        st.Page("pages/rewards.py", title="Rewards", icon=":material/thumbs_up_down:"),
        st.Page("pages/features.py", title="Features", icon=":material/manage_search:"),
        st.Page("pages/export.py", title="Export", icon=":material/download:"),
    ]
)
nav.run()
