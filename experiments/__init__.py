"""Ablation studies of the three papers, each one command:

    python launch.py --config=experiments/<name>.py[:quick] --sweep --workdir=W \
        --config.dataset.path=<CIFAR-10 archive or folder>

degradation    plain vs residual nets as depth grows (He et al. 2015, Fig. 6)
shortcuts      shortcut options A / B / C / none at one depth (He et al. 2015, Table 3)
preact         post- vs pre-activation ResNet-110/164 (He et al. 2016, Table 2)
wrn_width      width vs depth over WRN-d-k (Zagoruyko & Komodakis 2016, Tables 4-5, Fig. 4)
gradient_flow  per-layer gradient norms at initialisation and early in training
identity       ||F(x)|| / ||x|| per block of trained nets (He et al. 2015, Fig. 7)
"""
