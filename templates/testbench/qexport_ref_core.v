// qexport behavioural reference core: a tile of a KERNEL x KERNEL conv with stride STRIDE on a
// ROWS x COLS array, over a GRID x GRID input grid, GRID = (TILE-1)*STRIDE + KERNEL.
// Not synthesizable; it computes in one clock what the real array computes over many, so a
// testbench rendered by `qexport testbench` runs out of the box. Replace it with your DUT: the
// testbench drives these ports and this handshake, and nothing else.
//
// Interface (all inputs are sampled on the rising edge of clk; the testbench changes them just
// after a falling edge):
//   act_we,  act_addr  (grid position r*GRID+c), act_data  (ROWS lanes, channel 0 in the low bits)
//   w_we,    w_kij (kernel position ki*KERNEL+kj), w_col (output channel), w_data (ROWS lanes)
//   addr_we, addr_index, addr_data   weight-stationary only: acc_address table
//            (pixel*KERNEL*KERNEL + kernel position)
//   clear    high for one rising edge: zero the accumulators
//   start    high for one rising edge: add the loaded input-channel tile's conv to the accumulators
//   done     high for at least one clock once that sum is in the accumulators
//   out_addr (output pixel orow*TILE+ocol) -> out_data (COLS lanes of OUT_BITS, channel 0 lowest)
//
// Handshake, per input-channel tile:
//   1. load act/w (and the address table once), then pulse start for one clock;
//   2. the testbench then looks at done at every falling edge, starting half a clock after the
//      rising edge that took start, and fails naming the tile if done is not high within
//      TIMEOUT_CYCLES clocks (a tb parameter, default 100000). Any latency is fine; done must stay
//      low from that start until the sum is complete, and the inputs hold still meanwhile.
//   3. after the last input-channel tile's done, out_data may be read; before that it may be
//      anything (X included).
// Read latency: one clock. The testbench sets out_addr after a falling edge and samples out_data
// at the next falling edge, so out_data may be registered on the rising edge in between (as here,
// like a block RAM's synchronous read) or be combinational.
{% if sfu %}
//
// psum_data (`qexport testbench --sfu`): out_addr's pixel's accumulated sums BEFORE ReLU, COLS
// signed lanes of PSUM_BITS (channel 0 lowest), with out_data's read latency. This is what the
// team's SFU sees: its thresholds apply to the raw psum (a BatchNorm with a negative bias or gamma
// makes count(ReLU(psum) >= T) differ from count(psum >= T)), so the SFU stage feeds it these.
{% endif %}
`timescale 1ns/1ps
module qexport_ref_core #(
    parameter ROWS = 8,
    parameter COLS = 8,
    parameter ACT_BITS = 4,
    parameter W_BITS = 4,
    parameter PSUM_BITS = 16,
    parameter OUT_BITS = 16,
    parameter TILE = 4,
    parameter KERNEL = 3,
    parameter STRIDE = 1,
    parameter GRID = (TILE - 1) * STRIDE + KERNEL,
    parameter ADDR_BITS = 11,
    parameter WEIGHT_STATIONARY = 1,
    parameter RELU = 1
) (
    input  wire clk,
    input  wire act_we,
    input  wire [15:0] act_addr,
    input  wire [ROWS*ACT_BITS-1:0] act_data,
    input  wire w_we,
    input  wire [3:0] w_kij,
    input  wire [15:0] w_col,
    input  wire [ROWS*W_BITS-1:0] w_data,
    input  wire addr_we,
    input  wire [15:0] addr_index,
    input  wire [ADDR_BITS-1:0] addr_data,
    input  wire clear,
    input  wire start,
    output reg  done,
    input  wire [15:0] out_addr,
    output wire [COLS*OUT_BITS-1:0] out_data{{ "," if sfu }}
{% if sfu %}
    output wire [COLS*PSUM_BITS-1:0] psum_data
{% endif %}
);
    localparam PIXELS = TILE * TILE;
    localparam PASSES = KERNEL * KERNEL;

    reg [ROWS*ACT_BITS-1:0] act [0:GRID*GRID-1];
    reg [ROWS*W_BITS-1:0] wgt [0:PASSES*COLS-1];
    reg [ADDR_BITS-1:0] addr_table [0:PIXELS*PASSES-1];
    // psum memory of the weight-stationary core: kernel pass k writes grid position n at GRID*GRID*k + n
    reg signed [PSUM_BITS-1:0] psum_mem [0:PASSES*GRID*GRID*COLS-1];
    reg signed [63:0] acc [0:PIXELS*COLS-1];

    integer k, n, oc, ic, p, ki, kj;
    reg signed [63:0] sum;

    function automatic signed [63:0] mac_row(input integer pos, input integer kij, input integer col);
        integer lane;
        reg signed [63:0] total;
        reg signed [W_BITS:0] w_lane;
        reg [ACT_BITS:0] x_lane;
        begin
            total = 0;
            for (lane = 0; lane < ROWS; lane = lane + 1) begin
                x_lane = {1'b0, act[pos][lane*ACT_BITS +: ACT_BITS]};
                w_lane = {wgt[kij*COLS + col][lane*W_BITS + W_BITS - 1], wgt[kij*COLS + col][lane*W_BITS +: W_BITS]};
                total = total + $signed(x_lane) * w_lane;
            end
            mac_row = total;
        end
    endfunction

    always @(posedge clk) begin
        done <= 1'b0;
        if (act_we) act[act_addr] <= act_data;
        if (w_we) wgt[w_kij*COLS + w_col] <= w_data;
        if (addr_we) addr_table[addr_index] <= addr_data;
        if (clear) for (p = 0; p < PIXELS*COLS; p = p + 1) acc[p] = 0;
        if (start) begin
            if (WEIGHT_STATIONARY) begin
                for (k = 0; k < PASSES; k = k + 1)
                    for (n = 0; n < GRID*GRID; n = n + 1)
                        for (oc = 0; oc < COLS; oc = oc + 1)
                            psum_mem[(GRID*GRID*k + n)*COLS + oc] = mac_row(n, k, oc);
                for (p = 0; p < PIXELS; p = p + 1)
                    for (oc = 0; oc < COLS; oc = oc + 1) begin
                        sum = 0;
                        for (k = 0; k < PASSES; k = k + 1)
                            sum = sum + psum_mem[addr_table[p*PASSES + k]*COLS + oc];
                        acc[p*COLS + oc] = acc[p*COLS + oc] + sum;
                    end
            end else begin
                // output-stationary: each PE keeps one pixel x channel and accumulates in place
                for (p = 0; p < PIXELS; p = p + 1)
                    for (oc = 0; oc < COLS; oc = oc + 1) begin
                        sum = 0;
                        for (ki = 0; ki < KERNEL; ki = ki + 1)
                            for (kj = 0; kj < KERNEL; kj = kj + 1)
                                sum = sum + mac_row((p/TILE*STRIDE + ki)*GRID + (p%TILE*STRIDE + kj),
                                                    ki*KERNEL + kj, oc);
                        acc[p*COLS + oc] = acc[p*COLS + oc] + sum;
                    end
            end
            done <= 1'b1;
        end
    end

    // the read is registered: out_data shows out_addr's pixel one rising edge after out_addr
{% include "testbench/_registered_read.v.j2" %}
{% if sfu %}

    // the raw accumulators, cut to PSUM_BITS (the psums fit them: the layout checks the psum width)
    wire [COLS*PSUM_BITS-1:0] psum_next;
    reg [COLS*PSUM_BITS-1:0] psum_q;
    generate
        for (lane = 0; lane < COLS; lane = lane + 1) begin : psum_lanes
            wire signed [63:0] raw = acc[out_addr*COLS + lane];
            assign psum_next[lane*PSUM_BITS +: PSUM_BITS] = raw[PSUM_BITS-1:0];
        end
    endgenerate
    always @(posedge clk) psum_q <= psum_next;
    assign psum_data = psum_q;
{% endif %}
endmodule
