package main

// brew names this build of the service; the demo changes it to show a
// push to the source travelling to the cluster.
const brew = "first brew"
