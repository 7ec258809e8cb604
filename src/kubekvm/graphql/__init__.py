"""The GraphQL API: a thin adapter from Strawberry types and resolvers to `kubekvm.services`."""
