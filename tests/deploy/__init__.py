"""Deployment checks: the Dockerfile and the Kubernetes manifests, without a cluster."""
