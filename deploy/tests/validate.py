#!/usr/bin/env python3
"""Validates Kubernetes objects (a JSON array in a file) against the OpenAPI schemas of a
Kubernetes release (kubernetes-validate, strict: unknown fields are errors), and
CoremqCluster objects against the CRD's own schema (jsonschema). Prints one line per object:
`ok KIND NAME`, `unchecked KIND NAME` (a kind with no schema here: ServiceMonitor) or
`invalid KIND NAME: REASON`, and exits 1 if any is invalid.

Usage: validate.py OBJECTS.json CRD.json KUBERNETES_VERSION
"""
import json
import sys

import jsonschema
import kubernetes_validate


def main():
    objects = json.load(open(sys.argv[1]))
    crd = json.load(open(sys.argv[2]))
    version = sys.argv[3]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    failed = False
    for obj in objects:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        try:
            if kind == "CoremqCluster":
                jsonschema.validate(obj, schema)
            elif obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                print(f"unchecked {kind} {name}")
                continue
            else:
                kubernetes_validate.validate(obj, version, strict=True)
            print(f"ok {kind} {name}")
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as error:
            message = str(error).splitlines()[0]
            print(f"invalid {kind} {name}: {message}")
            failed = True
        except Exception as error:  # an unknown kind or version: a failure too
            print(f"invalid {kind} {name}: {type(error).__name__}: {error}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
