"""The pod of a factor as Kubernetes sees it: spec pieces, the pod template guard, start-up
watching, how a pod ended, and the manifest ``render`` prints."""
