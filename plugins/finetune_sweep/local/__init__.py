"""The local pod backend (DESIGN 7): the kubelet of one container, emulated on this machine."""
