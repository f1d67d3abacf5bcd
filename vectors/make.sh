#!/usr/bin/env bash
# Regenerate every committed vector set. Run from the repository root: bash vectors/make.sh
# Each set's manifest.json records its command; `qexport check vectors/*/` verifies them.
set -euo pipefail
cd "$(dirname "$0")/.."
dump() { out=$1; shift; qexport dump "$@" -o "vectors/$out" --force; }

# features[33] of VGG16_quant_gradual (demo, untrained), flat profile, every format
for fmt in hex bin coe mif h npy; do
    dump "gradual33_flat_$fmt" --layer 33 --format "$fmt"
done
# ... in the course core's own format, the output-stationary variant, and a 16x16 array
dump gradual33_course_txt --layer 33 --profile course
dump gradual33_course_hex --layer 33 --profile course --format hex
dump gradual33_course-os_txt --layer 33 --profile course-os
dump gradual33_systolic16_hex --layer 33 --profile vectors/systolic16.toml
# a layer that needs channel tiling on the 8x8 core: 128 -> 32 channels
dump gradual27_course_txt --layer 27 --profile course
# a 2-bit layer: features[33] with 2-bit activations
dump gradual33_2bit_hex --layer 33 --bits-config vectors/bits_layer33_2bit.json
# every conv layer of a small committed checkpoint (architecture inferred from its state dict)
dump tiny_all_hex --all --checkpoint vectors/tiny_vgg.pth.tar --format hex
# a small ResNet-CIFAR checkpoint (widths 8/16/48, scripts/make_tiny_resnet.py): an 8 -> 8 conv at
# 32x32 in the course core's format, and the 1x1 stride-2 downsample in flat hex
dump tiny_resnet_layer1.0.conv1_course_txt --layer layer1.0.conv1 --checkpoint vectors/tiny_resnet.pth.tar --profile course
dump tiny_resnet_layer2.0.downsample.0_hex --layer layer2.0.downsample.0 --checkpoint vectors/tiny_resnet.pth.tar --format hex
# a rendered self-checking testbench with its vectors
qexport testbench --layer 33 --profile course -o vectors/gradual33_testbench --force
