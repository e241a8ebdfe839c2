#!/usr/bin/python3
"""Runs a command under an OCI seccomp profile (the JSON a container runtime takes, as
deploy/seccomp/coremq.json), applied with libseccomp as runc and crun apply it:
the default action for every syscall not named, each rule's action for the syscalls it
names, with its argument conditions; rules that only apply with capabilities the process
lacks (a container without CAP_SYS_ADMIN and friends) are left out.

Usage: seccomp-exec.py PROFILE COMMAND [ARGS...]   (needs Debian's python3-seccomp)
"""
import errno
import json
import os
import sys

import seccomp

OPS = {
    "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret if errno_ret is not None else errno.EPERM)
    raise SystemExit(f"seccomp-exec: unsupported action {name}")


def main():
    profile_path, command = sys.argv[1], sys.argv[2:]
    with open(profile_path) as file:
        profile = json.load(file)
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    fil = seccomp.SyscallFilter(defaction=default)
    for rule in profile["syscalls"]:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if includes.get("caps") or includes.get("arches") and "amd64" not in includes["arches"]:
            continue
        if excludes.get("arches") and "amd64" in excludes["arches"]:
            continue
        act = action(rule["action"], rule.get("errnoRet"))
        args = [
            seccomp.Arg(arg["index"], OPS[arg["op"]], arg["value"], arg.get("valueTwo", 0))
            for arg in rule.get("args") or []
        ]
        for name in rule["names"]:
            try:
                fil.add_rule(act, name, *args)
            except (RuntimeError, ValueError, OSError):
                # A syscall this architecture does not have, or a rule libseccomp would
                # not add twice: the runtimes skip these as well.
                pass
    fil.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
